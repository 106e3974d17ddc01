// spawn starts goroutines that exit at once and prints ns per goroutine: each is a create, a run
// and an exit. -trace runs Go's own execution tracer to io.Discard for comparison.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/trace"
	"sync"
	"time"
)

func child(wg *sync.WaitGroup) { wg.Done() }

func main() {
	n := flag.Int("n", 200000, "goroutines")
	withTrace := flag.Bool("trace", false, "run runtime/trace to io.Discard")
	wait := flag.Bool("wait", false, "wait for a line on stdin before starting")
	flag.Parse()
	if *wait {
		fmt.Fscanln(os.Stdin)
	}
	if *withTrace {
		if err := trace.Start(io.Discard); err != nil {
			panic(err)
		}
		defer trace.Stop()
	}
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *n; i++ {
		wg.Add(1)
		go child(&wg)
	}
	wg.Wait()
	elapsed := time.Since(start)
	fmt.Printf("ns/op %.1f\n", float64(elapsed.Nanoseconds())/float64(*n))
}
