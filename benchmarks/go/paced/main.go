// paced offers a steady goroutine-event rate for a fixed duration: each op starts a goroutine that
// hands one value back over an unbuffered channel and exits, which is 6 goroutine events (create,
// park, run, ready, exit, run) and one goroutine span. Ops are paced to a target rate in total over
// the workers; -rate 0 runs as fast as it can. It prints "ops N seconds S".
package main

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"time"
)

// Each worker works in slices (1 ms by default): it makes the ops that are due at once, then sleeps
// until the next slice, so the rate holds over any window longer than a few slices.
var slice = time.Millisecond

func handBack(ch chan<- int) { ch <- 1 }

func worker(rate float64, until time.Time, ops *int64, wg *sync.WaitGroup) {
	defer wg.Done()
	ch := make(chan int)
	var n int64
	start := time.Now()
	for {
		now := time.Now()
		if !now.Before(until) {
			break
		}
		due := n + 1000
		if rate > 0 {
			due = int64(rate * now.Sub(start).Seconds())
		}
		for ; n < due; n++ {
			go handBack(ch)
			<-ch
		}
		if rate > 0 {
			time.Sleep(slice)
		}
	}
	*ops = n
}

func main() {
	rate := flag.Float64("rate", 0, "ops per second in total (0: as fast as possible)")
	workers := flag.Int("workers", 1, "goroutines making ops")
	duration := flag.Duration("duration", 3*time.Second, "how long to run")
	wait := flag.Bool("wait", false, "wait for a line on stdin before starting")
	flag.DurationVar(&slice, "slice", time.Millisecond, "how long a worker sleeps between bursts")
	flag.Parse()
	if *wait {
		fmt.Fscanln(os.Stdin)
	}
	var wg sync.WaitGroup
	ops := make([]int64, *workers)
	start := time.Now()
	until := start.Add(*duration)
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go worker(*rate/float64(*workers), until, &ops[i], &wg)
	}
	wg.Wait()
	var total int64
	for _, n := range ops {
		total += n
	}
	fmt.Printf("ops %d seconds %.3f\n", total, time.Since(start).Seconds())
}
