// oracle exercises the goroutine behaviours gotel must see: worker pools, fan-out trees, channels,
// select, mutexes, timers, loopback network I/O and deep recursion that grows stacks.
//
//	oracle [-trace FILE] [-exit N] [-repeat N] SCENARIO [SCENARIO...]   (SCENARIO: pool tree chan select mutex
//	                                                        timer net stack, or all)
//
// With -trace, runtime/trace records the run: `go tool trace -d=parsed FILE` is the Go runtime's own
// account of every goroutine transition, against which tests/oracle.py checks gotel. With WAIT_STDIN
// set, it reads one line before starting, so that a tracer can attach first. Output is deterministic:
// one line per scenario with a checksum, so runs with and without gotel can be compared byte for byte.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/trace"
	"sort"
	"sync"
	"time"
)

func pool() int {
	jobs := make(chan int)
	results := make(chan int, 16)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				results <- j * j
			}
		}()
	}
	go func() {
		for i := 0; i < 400; i++ {
			jobs <- i
		}
		close(jobs)
	}()
	go func() { wg.Wait(); close(results) }()
	sum := 0
	for r := range results {
		sum += r
	}
	return sum
}

func tree(depth, fanout int) int {
	if depth == 0 {
		return 1
	}
	out := make(chan int, fanout)
	for i := 0; i < fanout; i++ {
		go func() { out <- tree(depth-1, fanout) }()
	}
	n := 1
	for i := 0; i < fanout; i++ {
		n += <-out
	}
	return n
}

func pingpong() int {
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v + 1
		}
		close(pong)
	}()
	v := 0
	for i := 0; i < 300; i++ {
		ping <- v
		v = <-pong
	}
	close(ping)
	<-pong
	return v
}

func selects() int {
	a, b, quit := make(chan int), make(chan int), make(chan struct{})
	go func() {
		for i := 0; i < 100; i++ {
			a <- i
		}
	}()
	go func() {
		for i := 0; i < 100; i++ {
			b <- 2 * i
		}
	}()
	go func() {
		time.Sleep(20 * time.Millisecond)
		close(quit)
	}()
	sum, got := 0, 0
	for got < 200 {
		select {
		case v := <-a:
			sum += v
			got++
		case v := <-b:
			sum += v
			got++
		}
	}
	<-quit
	return sum
}

func mutexes() int {
	var mu sync.Mutex
	var rw sync.RWMutex
	cond := sync.NewCond(&mu)
	counter, ready := 0, false
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			for !ready {
				cond.Wait()
			}
			mu.Unlock()
			for k := 0; k < 200; k++ {
				mu.Lock()
				counter++
				mu.Unlock()
				rw.RLock()
				_ = counter
				rw.RUnlock()
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	mu.Lock()
	ready = true
	cond.Broadcast()
	mu.Unlock()
	wg.Wait()
	return counter
}

func timers() int {
	n := 0
	time.Sleep(2 * time.Millisecond)
	n++
	<-time.After(2 * time.Millisecond)
	n++
	t := time.NewTicker(time.Millisecond)
	for i := 0; i < 5; i++ {
		<-t.C
		n++
	}
	t.Stop()
	done := make(chan struct{})
	time.AfterFunc(time.Millisecond, func() { close(done) })
	<-done
	return n + 1
}

func netio() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("listen:", err)
		return -1
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				io.Copy(c, c)
			}(c)
		}
	}()
	var wg sync.WaitGroup
	total := make([]int, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 64)
			for k := 0; k < 20; k++ {
				msg := []byte(fmt.Sprintf("client %d message %d", i, k))
				c.Write(msg)
				n, _ := io.ReadFull(c, buf[:len(msg)])
				total[i] += n
			}
		}(i)
	}
	wg.Wait()
	sum := 0
	for _, t := range total {
		sum += t
	}
	return sum
}

//go:noinline
func recurse(n int, pad [64]byte) int {
	if n == 0 {
		return int(pad[0])
	}
	pad[0]++
	return recurse(n-1, pad) + 1
}

func stacks() int {
	out := make(chan int)
	for i := 0; i < 4; i++ {
		go func(i int) {
			var pad [64]byte
			out <- recurse(2000*(i+1), pad)
		}(i)
	}
	vals := []int{}
	for i := 0; i < 4; i++ {
		vals = append(vals, <-out)
	}
	sort.Ints(vals)
	sum := 0
	for _, v := range vals {
		sum += v
	}
	return sum
}

var scenarios = map[string]func() int{
	"pool":   pool,
	"tree":   func() int { return tree(4, 4) },
	"chan":   pingpong,
	"select": selects,
	"mutex":  mutexes,
	"timer":  timers,
	"net":    netio,
	"stack":  stacks,
}

var order = []string{"pool", "tree", "chan", "select", "mutex", "timer", "net", "stack"}

func main() {
	traceFile := flag.String("trace", "", "write a runtime/trace to this file")
	exitCode := flag.Int("exit", 0, "exit with this status")
	repeat := flag.Int("repeat", 1, "run the scenarios this many times (0: until killed)")
	flag.Parse()
	names := flag.Args()
	if len(names) == 0 || (len(names) == 1 && names[0] == "all") {
		names = order
	}
	for _, name := range names {
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
	for i := 0; *repeat == 0 || i < *repeat; i++ {
		for _, name := range names {
			fmt.Printf("%s %d\n", name, scenarios[name]())
		}
	}
	if *exitCode != 0 {
		trace.Stop()
		os.Exit(*exitCode)
	}
}
