// lingerer keeps a few goroutines busy (spawning, parking on channels and timers) for a while,
// prints a heartbeat line every 100 ms, then exits with the status it was asked for. Tests use it
// as a long-lived target: to kill it, to kill its tracer, to check that it stays healthy.
package main

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"time"
)

func main() {
	runFor := flag.Duration("for", 2*time.Second, "how long to run")
	exit := flag.Int("exit", 0, "exit status")
	workers := flag.Int("workers", 4, "goroutines spawned per tick")
	flag.Parse()
	fmt.Printf("pid %d\n", os.Getpid())
	deadline := time.Now().Add(*runFor)
	tick := 0
	for time.Now().Before(deadline) {
		var wg sync.WaitGroup
		ch := make(chan int)
		for i := 0; i < *workers; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				time.Sleep(time.Millisecond)
				ch <- i
			}(i)
		}
		for i := 0; i < *workers; i++ {
			<-ch
		}
		wg.Wait()
		tick++
		fmt.Printf("tick %d\n", tick)
		time.Sleep(100 * time.Millisecond)
	}
	os.Exit(*exit)
}
