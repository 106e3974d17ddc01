// levels drives the level, window, trigger and budget tests: goroutine traffic whose rate the test
// chooses, a change of rate mid-run, or a growing crowd of blocked goroutines.
//
//	levels pingpong RATE SECONDS [RATE SECONDS]...  ping-pong ops per second, phase after phase
//	                                                (prints "phase UNIXNS" as each begins)
//	levels grow PER_SECOND SECONDS                  start PER_SECOND goroutines a second that block
//	levels quiet SECONDS                            one goroutine ticking every 100 ms (GC each tick)
//	levels stuck N SECONDS                          N goroutines blocked for good (GC every 100 ms)
//	levels window FLAGFILE TRACEFILE                 8 goroutines park; once FLAGFILE exists, each
//	                                                is woken 5 times under runtime/trace`
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"runtime/trace"
	"strconv"
	"time"
)

// window: goroutines alive (and parked) before a window opens, woken inside it, some of them
// creating children there; the whole wake-up runs under Go's own tracer, the test's oracle.
func window(flag, traceFile string) {
	chans := make([]chan int, 8)
	done := make(chan int)
	for i := range chans {
		chans[i] = make(chan int)
		go func(c chan int) {
			for v := range c {
				if v%2 == 0 {
					go func() { done <- v }()
				} else {
					done <- v
				}
			}
		}(chans[i])
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(flag); err == nil {
			break
		}
		if i%10 == 0 {
			runtime.GC() // stamps the parked goroutines' g.waitsince
		}
		time.Sleep(10 * time.Millisecond)
	}
	f, err := os.Create(traceFile)
	if err != nil {
		panic(err)
	}
	if err := trace.Start(f); err != nil {
		panic(err)
	}
	for r := 0; r < 5; r++ {
		for _, c := range chans {
			c <- r
			<-done
		}
	}
	trace.Stop()
	f.Close()
	fmt.Println("woken", len(chans)*5)
}

func pingpong(rate int, d time.Duration) int {
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v
		}
	}()
	n, start := 0, time.Now()
	for time.Since(start) < d {
		// Bursts of rate/100 ops every 10 ms.
		for i := 0; i < rate/100; i++ {
			ping <- i
			<-pong
			n++
		}
		go func() {}() // a creation and an exit for the lifecycle probes, too
		time.Sleep(10 * time.Millisecond)
	}
	close(ping)
	return n
}

// busy keeps about half a core busy (5 ms spinning, 5 ms asleep), as a service's own work would:
// the budget is a share of the target's CPU time.
func busy() {
	for {
		t := time.Now()
		for time.Since(t) < 5*time.Millisecond {
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func main() {
	if os.Getenv("WAIT_STDIN") != "" {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	arg := func(i int) int {
		v, _ := strconv.Atoi(os.Args[i])
		return v
	}
	switch os.Args[1] {
	case "pingpong":
		go busy()
		n := 0
		for i := 2; i+1 < len(os.Args); i += 2 {
			fmt.Println("phase", time.Now().UnixNano())
			n += pingpong(arg(i), time.Duration(arg(i+1))*time.Second)
		}
		fmt.Println("end", time.Now().UnixNano())
		fmt.Println("ops", n)
	case "grow":
		block := make(chan struct{})
		end := time.Now().Add(time.Duration(arg(3)) * time.Second)
		for time.Now().Before(end) {
			for i := 0; i < arg(2)/10; i++ {
				go func() { <-block }()
			}
			time.Sleep(100 * time.Millisecond)
		}
		close(block)
		fmt.Println("grown")
	case "window":
		window(os.Args[2], os.Args[3])
	case "quiet":
		// GC stamps g.waitsince: with it, a quiet program's waits are short, not merely unstamped.
		end := time.Now().Add(time.Duration(arg(2)) * time.Second)
		for time.Now().Before(end) {
			time.Sleep(100 * time.Millisecond)
			runtime.GC()
		}
		fmt.Println("quiet")
	case "stuck":
		block := make(chan struct{})
		for i := 0; i < arg(2); i++ {
			go func() { <-block }()
		}
		end := time.Now().Add(time.Duration(arg(3)) * time.Second)
		for time.Now().Before(end) {
			time.Sleep(100 * time.Millisecond)
			runtime.GC()
		}
		fmt.Println("stuck")
	}
}
