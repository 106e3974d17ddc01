// spawn starts goroutines that exit at once and prints ns per goroutine: each is a create, a run
// and an exit. -trace runs Go's own execution tracer to io.Discard for comparison; -d runs for a
// duration instead of -n goroutines (waiting for every 1024 to exit, so that they never pile up);
// -warm (with -wait) runs the loop unmeasured from the first line on stdin to a second one, so that
// a tracer can start on a busy program; -progress (with -d) prints the goroutines started and exited
// so far (to the last 1024) on each SIGUSR1.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/trace"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func child(wg *sync.WaitGroup) { wg.Done() }

func main() {
	n := flag.Int("n", 200000, "goroutines")
	d := flag.Duration("d", 0, "run this long instead")
	withTrace := flag.Bool("trace", false, "run runtime/trace to io.Discard")
	wait := flag.Bool("wait", false, "wait for a line on stdin before starting")
	warm := flag.Bool("warm", false, "with -wait: run unmeasured until a second line on stdin")
	progress := flag.Bool("progress", false, "print \"progress N\" (ops so far) on each SIGUSR1")
	flag.Parse()
	var done atomic.Int64
	if *progress {
		reportOnSignal(&done)
	}
	if *wait {
		fmt.Fscanln(os.Stdin)
	}
	if *warm {
		var started atomic.Bool
		go func() { fmt.Fscanln(os.Stdin); started.Store(true) }()
		var wg sync.WaitGroup
		for i := 1; i%1024 != 0 || !started.Load(); i++ {
			if i%1024 == 0 {
				wg.Wait()
			}
			wg.Add(1)
			go child(&wg)
		}
		wg.Wait()
	}
	if *withTrace {
		if err := trace.Start(io.Discard); err != nil {
			panic(err)
		}
		defer trace.Stop()
	}
	var wg sync.WaitGroup
	start := time.Now()
	ops := 0
	for ; *d > 0 || ops < *n; ops++ {
		if *d > 0 && ops%1024 == 0 {
			wg.Wait()
			if *progress {
				done.Store(int64(ops))
			}
			if time.Since(start) >= *d {
				break
			}
		}
		wg.Add(1)
		go child(&wg)
	}
	wg.Wait()
	elapsed := time.Since(start)
	fmt.Printf("ns/op %.1f ops %d\n", float64(elapsed.Nanoseconds())/float64(ops), ops)
}

// reportOnSignal prints "progress N" with N = *done on each SIGUSR1.
func reportOnSignal(done *atomic.Int64) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	go func() {
		for range c {
			fmt.Printf("progress %d\n", done.Load())
		}
	}()
}
