// spawn starts goroutines that exit at once and prints ns per goroutine: each is a create, a run
// and an exit. -trace runs Go's own execution tracer to io.Discard for comparison; -d runs for a
// duration instead of -n goroutines (waiting for every 1024 to exit, so that they never pile up).
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
	d := flag.Duration("d", 0, "run this long instead")
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
	ops := 0
	for ; *d > 0 || ops < *n; ops++ {
		if *d > 0 && ops%1024 == 0 {
			wg.Wait()
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
