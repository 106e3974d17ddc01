// churn generates goroutine transitions as fast as it can, for measuring what tracing them costs.
//
//	churn pingpong N [PAIRS]   N round trips over unbuffered channels per pair (2 parks, 2 readies)
//	churn spawn N              N goroutines started and awaited, 64 at a time
//	churn syscall N            N one-byte writes to /dev/null (entersyscall/exitsyscall each)
//
// It prints "ops N ns_per_op X cpu_ns_per_op Y": wall and CPU (user + system) time of the loop only,
// after an optional WAIT_STDIN line.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// cpuNanos is the CPU time (user + system) the process has used: on a shared machine it moves
// less with other tenants' load than wall time, and a uprobe's cost is charged to it as system time.
func cpuNanos() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func pingpong(n, pairs int) {
	var wg sync.WaitGroup
	for p := 0; p < pairs; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ping, pong := make(chan int), make(chan int)
			go func() {
				for v := range ping {
					pong <- v
				}
			}()
			for i := 0; i < n; i++ {
				ping <- i
				<-pong
			}
			close(ping)
		}()
	}
	wg.Wait()
}

func spawn(n int) {
	var wg sync.WaitGroup
	for i := 0; i < n; i += 64 {
		for k := 0; k < 64; k++ {
			wg.Add(1)
			go func() { wg.Done() }()
		}
		wg.Wait()
	}
}

func syscalls(n int) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	b := []byte{0}
	for i := 0; i < n; i++ {
		f.Write(b)
	}
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: churn pingpong|spawn|syscall N [PAIRS]")
		os.Exit(2)
	}
	n, _ := strconv.Atoi(os.Args[2])
	pairs := 1
	if len(os.Args) > 3 {
		pairs, _ = strconv.Atoi(os.Args[3])
	}
	if os.Getenv("WAIT_STDIN") != "" {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	start, cpu := time.Now(), cpuNanos()
	ops := n
	switch os.Args[1] {
	case "pingpong":
		pingpong(n, pairs)
		ops = n * pairs
	case "spawn":
		spawn(n)
	case "syscall":
		syscalls(n)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
	wall, used := time.Since(start).Nanoseconds(), cpuNanos()-cpu
	fmt.Printf("ops %d ns_per_op %.1f cpu_ns_per_op %.1f\n", ops, float64(wall)/float64(ops),
		float64(used)/float64(ops))
}
