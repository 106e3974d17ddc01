// pingpong bounces a token between two goroutines over unbuffered channels and prints ns per
// round trip. Each round trip is 2 parks + 2 readies + 2 runs: the densest goroutine-event load a
// Go program produces. -trace runs Go's own execution tracer to io.Discard for comparison; -d runs
// for a duration instead of -n round trips (and prints how many it made).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/trace"
	"time"
)

func main() {
	n := flag.Int("n", 200000, "round trips")
	d := flag.Duration("d", 0, "run this long instead (checked every 256 round trips)")
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
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v + 1
		}
		close(pong)
	}()
	start := time.Now()
	ops := 0
	for ; *d > 0 || ops < *n; ops++ {
		if *d > 0 && ops%256 == 0 && time.Since(start) >= *d {
			break
		}
		ping <- ops
		<-pong
	}
	elapsed := time.Since(start)
	close(ping)
	fmt.Printf("ns/op %.1f ops %d\n", float64(elapsed.Nanoseconds())/float64(ops), ops)
}
