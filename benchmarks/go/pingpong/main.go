// pingpong bounces a token between two goroutines over unbuffered channels and prints ns per
// round trip. Each round trip is 2 parks + 2 readies + 2 runs: the densest goroutine-event load a
// Go program produces. -trace runs Go's own execution tracer to io.Discard for comparison; -d runs
// for a duration instead of -n round trips (and prints how many it made); -warm (with -wait) runs
// round trips unmeasured from the first line on stdin to a second one, so that a tracer can start
// on a busy program; -progress prints the round trips made so far (to the last 256) on each SIGUSR1.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/trace"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	n := flag.Int("n", 200000, "round trips")
	d := flag.Duration("d", 0, "run this long instead (checked every 256 round trips)")
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
	if *warm {
		var started atomic.Bool
		go func() { fmt.Fscanln(os.Stdin); started.Store(true) }()
		for i := 1; i%256 != 0 || !started.Load(); i++ {
			ping <- i
			<-pong
		}
	}
	start := time.Now()
	ops := 0
	for ; *d > 0 || ops < *n; ops++ {
		if ops%256 == 0 {
			if *progress {
				done.Store(int64(ops))
			}
			if *d > 0 && time.Since(start) >= *d {
				break
			}
		}
		ping <- ops
		<-pong
	}
	elapsed := time.Since(start)
	close(ping)
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
