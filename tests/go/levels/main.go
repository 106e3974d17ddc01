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
//	levels spin WORKERS SECONDS [QUIET SECONDS2]    GOMAXPROCS 1, WORKERS goroutines computing in
//	                                                2 ms slices (each waits for the others' turns),
//	                                                then QUIET seconds of rest, then SECONDS2 more
//	levels schedlat WORKERS SECONDS                 prints /sched/latencies:seconds, waits for a
//	                                                line on stdin, spins, prints it again with the
//	                                                p99 of the difference, waits for a line
//	levels churn ROUNDS SPAWN SECONDS               every SECONDS/ROUNDS: SPAWN goroutines that
//	                                                park, then exit (prints each round's goids and
//	                                                the Unix ns when all had parked, and released)
package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"time"
)

// spin runs workers goroutines on one P for d: each computes for 2 ms, then yields, so every one
// waits in the run queue while the others take their turns (scheduling latency ~2 ms x workers).
func spin(workers int, d time.Duration) {
	runtime.GOMAXPROCS(1)
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				for t := time.Now(); time.Since(t) < 2*time.Millisecond; {
				}
				runtime.Gosched()
			}
		}()
	}
	wg.Wait()
}

func schedLatencies() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	return s[0].Value.Float64Histogram()
}

func printHistogram(h *metrics.Float64Histogram) {
	counts := make([]string, len(h.Counts))
	for i, c := range h.Counts {
		counts[i] = strconv.FormatUint(c, 10)
	}
	fmt.Println("hist", strings.Join(counts, " "))
}

// p99 of what h recorded since before, the bucket's upper bound (lower for the last, unbounded).
func p99(before, h *metrics.Float64Histogram) (float64, uint64) {
	var n uint64
	for i := range h.Counts {
		n += h.Counts[i] - before.Counts[i]
	}
	if n == 0 {
		return 0, 0
	}
	rank, seen := uint64(math.Ceil(0.99*float64(n))), uint64(0)
	for i := range h.Counts {
		seen += h.Counts[i] - before.Counts[i]
		if seen >= rank {
			if math.IsInf(h.Buckets[i+1], 1) {
				return h.Buckets[i], n
			}
			return h.Buckets[i+1], n
		}
	}
	return 0, n
}

// churn: goroutines that exist for a while (parked) and exit, round after round, so that under
// windows many are born in one window and gone before the next.
func churn(rounds, spawn int, d time.Duration) {
	for r := 0; r < rounds; r++ {
		release := make(chan struct{})
		var wg sync.WaitGroup
		ids := make(chan int64, spawn)
		for i := 0; i < spawn; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ids <- goid()
				<-release
			}()
		}
		goids := make([]string, spawn)
		for i := range goids {
			goids[i] = strconv.FormatInt(<-ids, 10)
		}
		parked := time.Now().UnixNano()
		time.Sleep(d / time.Duration(rounds) / 2)
		released := time.Now().UnixNano()
		close(release)
		wg.Wait()
		fmt.Printf("round %d parked %d released %d goids %s\n", r, parked, released,
			strings.Join(goids, ","))
		time.Sleep(d / time.Duration(rounds) / 2)
	}
}

// goid of the calling goroutine, from its own stack trace header ("goroutine 18 [running]:").
func goid() int64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf))
	id, _ := strconv.ParseInt(f[1], 10, 64)
	return id
}

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
	case "spin":
		spin(arg(2), time.Duration(arg(3))*time.Second)
		if len(os.Args) > 5 {
			time.Sleep(time.Duration(arg(4)) * time.Second)
			spin(arg(2), time.Duration(arg(5))*time.Second)
		}
		fmt.Println("spun")
	case "schedlat":
		in := bufio.NewReader(os.Stdin)
		before := schedLatencies()
		printHistogram(before)
		in.ReadString('\n')
		spin(arg(2), time.Duration(arg(3))*time.Second)
		after := schedLatencies()
		printHistogram(after)
		q, n := p99(before, after)
		fmt.Println("p99", q, n)
		in.ReadString('\n')
	case "churn":
		churn(arg(2), arg(3), time.Duration(arg(4))*time.Second)
		fmt.Println("churned")
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
