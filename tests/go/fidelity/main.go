// fidelity exercises what a goroutine tracer most easily gets wrong, for tests/receiver/test_fidelity.py
// to compare gotel with Go's own tracer goroutine by goroutine:
//
//	gcspin   a goroutine spinning while the program makes a GC cycle every few ms: the GC stops it
//	         to scan their stacks (preemptPark, a status change that bypasses casgstatus)
//	gosched  goroutines yielding with runtime.Gosched (running -> runnable -> running)
//	assist   allocation-heavy goroutines under a low GOGC: GC assists, mark workers
//	longwait goroutines blocked for 300 ms while others churn: trace roll-over with open parks
//	split    one goroutine creating more goroutines than a trace holds: split traces
//	names    start functions the compiler wraps (go f(x), closures, methods) or inlines
//
//	fidelity [-trace FILE] [SCENARIO...]   (default: all, in the order above)
//
// With WAIT_STDIN set it reads one line before starting, so that a tracer can attach first. Output is
// one deterministic line per scenario, so runs with and without gotel compare byte for byte.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/trace"
	"sync"
	"sync/atomic"
	"time"
)

var sink atomic.Uint64

//go:noinline
func work(x uint64) uint64 { return x*6364136223846793005 + 1442695040888963407 }

func gcspin() int {
	var stop atomic.Bool
	var wg sync.WaitGroup
	for i := 0; i < 1; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := uint64(1)
			for !stop.Load() {
				for k := 0; k < 1000; k++ {
					x = work(x)
				}
			}
			sink.Add(x)
		}()
	}
	// Garbage at a steady pace under a low GOGC: a GC cycle every few milliseconds (runtime.GC()
	// would do too, but it waits for sweeping in a runtime.Gosched loop: a flood of events).
	old := debug.SetGCPercent(10)
	var garbage [][]byte
	for i := 0; i < 60; i++ {
		for k := 0; k < 256; k++ {
			garbage = append(garbage, make([]byte, 4096))
		}
		garbage = garbage[:0]
		time.Sleep(time.Millisecond)
	}
	debug.SetGCPercent(old)
	stop.Store(true)
	wg.Wait()
	return 1
}

func gosched() int {
	var wg sync.WaitGroup
	n := atomic.Int64{}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 500; k++ {
				n.Add(1)
				runtime.Gosched()
			}
		}()
	}
	wg.Wait()
	return int(n.Load())
}

func assist() int {
	old := debug.SetGCPercent(25)
	defer debug.SetGCPercent(old)
	var wg sync.WaitGroup
	for i := 0; i < 1; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			keep := make([][]byte, 512)
			for k := 0; k < 10000; k++ {
				keep[k%len(keep)] = make([]byte, 1024+i)
			}
			sink.Add(uint64(len(keep[0])))
		}(i)
	}
	wg.Wait()
	return 1
}

func longwait() int {
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-release
		}()
	}
	// Churn: short goroutines that park once, enough to fill small traces many times over.
	deadline := time.Now().Add(300 * time.Millisecond)
	churned := 0
	for time.Now().Before(deadline) {
		done := make(chan int)
		for k := 0; k < 20; k++ {
			go func(k int) { done <- k }(k)
		}
		for k := 0; k < 20; k++ {
			<-done
		}
		churned += 20
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	return 20
}

func split() int {
	var wg sync.WaitGroup
	gate := make(chan struct{})
	n := atomic.Int64{}
	for i := 0; i < 600; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			n.Add(1)
		}()
	}
	time.Sleep(5 * time.Millisecond)
	close(gate)
	wg.Wait()
	return int(n.Load())
}

// spin and idle are small enough to be inlined into the wrappers of `go spin(ch)` and `go idle(i)`.
func spin(ch chan int) { time.Sleep(time.Millisecond); ch <- 1 }

func idle(i int, w io.Writer, ch chan int) {
	fmt.Fprint(w, i)
	ch <- i
}

type server struct{ ch chan int }

func (s *server) run(k int) {
	time.Sleep(time.Millisecond)
	s.ch <- k
}

//go:noinline
func named(ch chan int, k int) {
	time.Sleep(time.Millisecond)
	ch <- k
}

func names() int {
	ch := make(chan int, 64)
	s := &server{ch}
	n := 0
	for i := 0; i < 4; i++ {
		go spin(ch)
		go idle(i, io.Discard, ch)
		go s.run(i)
		go named(ch, i)
		go func() { ch <- 1 }()
		go func(k int) {
			time.Sleep(time.Millisecond)
			ch <- k
		}(i)
		n += 6
	}
	for i := 0; i < n; i++ {
		<-ch
	}
	return n
}

var scenarios = map[string]func() int{
	"gcspin": gcspin, "gosched": gosched, "assist": assist, "longwait": longwait, "split": split,
	"names": names,
}

var order = []string{"gcspin", "gosched", "assist", "longwait", "split", "names"}

func main() {
	traceFile := flag.String("trace", "", "write a runtime/trace to this file")
	flag.Parse()
	list := flag.Args()
	if len(list) == 0 || (len(list) == 1 && list[0] == "all") {
		list = order
	}
	for _, name := range list {
		if scenarios[name] == nil {
			fmt.Fprintf(os.Stderr, "unknown scenario %q\n", name)
			os.Exit(2)
		}
	}
	if os.Getenv("WAIT_STDIN") != "" {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := trace.Start(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		defer trace.Stop()
	}
	for _, name := range list {
		fmt.Printf("%s %d\n", name, scenarios[name]())
	}
}
