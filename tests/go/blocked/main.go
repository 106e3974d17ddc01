// blocked is the program the goroutine census is checked on: it serves net/http/pprof (the
// runtime's own goroutine dump is the oracle) and parks goroutines on channels, select, a mutex,
// a WaitGroup, a Cond, a sleep and a network read, some of them under inlined calls.
//
//	blocked                   the fixed set above, then waits
//	blocked -n N -depth D     also N goroutines parked on a channel D calls deep (benchmarks)
//	blocked -leak             healthy churn plus one site that leaks a goroutine every 20 ms
//
// It prints the pprof address on its first line and "ready" once every goroutine is parked.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"sync"
	"time"
)

var (
	never   = make(chan int)
	full    = make(chan int)
	mu      sync.Mutex
	wg      sync.WaitGroup
	cond    = sync.NewCond(&sync.Mutex{})
	started sync.WaitGroup
)

//go:noinline
func recvForever() int { return <-never }

//go:noinline
func sendForever() { full <- 1 }

//go:noinline
func selectForever(a, b chan int) int {
	select {
	case v := <-a:
		return v
	case v := <-b:
		return v
	}
}

//go:noinline
func lockForever() { mu.Lock(); mu.Unlock() }

//go:noinline
func waitForever() { wg.Wait() }

//go:noinline
func condForever() {
	cond.L.Lock()
	cond.Wait()
	cond.L.Unlock()
}

// inlinedOuter and inlinedInner are small enough to be inlined into nested: the unwinder must
// expand them from the inline tree to print the frames Go prints.
func inlinedInner(c chan int) int { return recvOn(c) + 1 }
func inlinedOuter(c chan int) int { return inlinedInner(c) * 2 }

//go:noinline
func recvOn(c chan int) int { return <-c }

//go:noinline
func nested() int { return inlinedOuter(make(chan int)) }

//go:noinline
func deep(d int, c chan int) int {
	if d <= 1 {
		return <-c
	}
	return deep(d-1, c) + 1
}

//go:noinline
func readForever(conn net.Conn) {
	buf := make([]byte, 1)
	conn.Read(buf)
}

//go:noinline
func leakyHandler() {
	reply := make(chan int) // nobody ever answers: the goroutine below leaks
	go leakyWorker(reply)
}

//go:noinline
func leakyWorker(reply chan int) { reply <- compute() }

//go:noinline
func compute() int { return 42 }

//go:noinline
func healthyHandler() {
	done := make(chan int, 1)
	go healthyWorker(done)
	<-done
}

var sink []byte

//go:noinline
func healthyWorker(done chan int) {
	sink = make([]byte, 64<<10) // garbage, so the GC runs and stamps waits (g.waitsince)
	time.Sleep(time.Millisecond)
	done <- 1
}

func spawn(f func()) {
	started.Add(1)
	go func() {
		started.Done()
		f()
	}()
}

func main() {
	n := flag.Int("n", 0, "extra goroutines parked on a channel")
	depth := flag.Int("depth", 4, "their call depth")
	leak := flag.Bool("leak", false, "leak a goroutine every 20 ms among healthy churn")
	flag.Parse()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go http.Serve(ln, nil)
	fmt.Println(ln.Addr().String())

	mu.Lock()
	wg.Add(1)
	a, b := make(chan int), make(chan int)
	spawn(func() { recvForever() })
	spawn(func() { sendForever() })
	spawn(func() { selectForever(a, b) })
	spawn(func() { lockForever() })
	spawn(func() { waitForever() })
	spawn(func() { condForever() })
	spawn(func() { time.Sleep(time.Hour) })
	spawn(func() { nested() })
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	spawn(func() { readForever(peer) })
	c := make(chan int)
	for i := 0; i < *n; i++ {
		go deep(*depth, c)
	}
	started.Wait()
	time.Sleep(200 * time.Millisecond) // let every goroutine reach its park
	fmt.Println("ready")
	if *leak {
		go func() {
			for i := 0; ; i++ {
				healthyHandler()
				if i%20 == 0 {
					leakyHandler()
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	select {}
}
