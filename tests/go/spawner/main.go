// spawner starts N goroutines that each wait on a channel, then releases them and waits for all.
// Its behaviour bounds what a probe on runtime.casgstatus must see: >= N creations, >= N exits.
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
)

func worker(id int, start <-chan struct{}, out chan<- int, wg *sync.WaitGroup) {
	defer wg.Done()
	<-start
	out <- id * 2
}

func main() {
	n := 1000
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	// A tracer attaches first, then says go on stdin; the interesting part starts only then.
	if os.Getenv("WAIT_STDIN") != "" {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	start := make(chan struct{})
	out := make(chan int, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go worker(i, start, out, &wg)
	}
	close(start)
	wg.Wait()
	// wg.Done runs before a worker exits: wait until every worker has really exited (its
	// status went to _Gdead), so that a tracer sees N exits before the process ends.
	for runtime.NumGoroutine() > 1 {
		runtime.Gosched()
	}
	close(out)
	sum := 0
	for v := range out {
		sum += v
	}
	fmt.Printf("spawned %d sum %d\n", n, sum)
}
