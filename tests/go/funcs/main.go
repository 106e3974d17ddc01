// funcs: a program that counts its own calls and times them per goroutine, for gotel's function
// probes to be checked against. Usage: funcs WORKERS ROUNDS; prints "ready", waits for a line on
// stdin, runs, prints deterministic results on stdout. With FUNCS_TIMES=path it writes each call of
// main.block as the calling goroutine itself saw it: "goid start end", CLOCK_MONOTONIC ns read just
// before the call and just after it returned (the clock BPF's bpf_ktime_get_ns reads).
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

func monotonic() int64 {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}

type Counter struct{ n int }

//go:noinline
func (c *Counter) Inc(by int) int { c.n += by; return c.n }

type Point struct{ X, Y int }

//go:noinline
func (p Point) Sum() int { return p.X + p.Y }

//go:noinline
func add(a, b int) int { return a + b }

//go:noinline
func label(s string, n int) bool { return len(s) == n }

//go:noinline
func fib(n int) int {
	if n < 2 {
		return n
	}
	return fib(n-1) + fib(n-2)
}

//go:noinline
func thrower(i int) int {
	if i%5 == 0 {
		panic(fmt.Sprintf("boom %d", i))
	}
	return i
}

//go:noinline
func guarded(i int) (r int) {
	defer func() {
		if recover() != nil {
			r = -1
		}
	}()
	return thrower(i) * 2
}

// block yields, sleeps and waits on a channel mid-call: the goroutine may come back on another thread.
//
//go:noinline
func block(i int, ch chan int) int {
	runtime.Gosched()
	time.Sleep(time.Duration(100+i%7*50) * time.Microsecond)
	ch <- i
	v := <-ch
	runtime.Gosched()
	return v
}

//go:noinline
func call(f func(int) int, v int) int { return f(v) }

func tiny(x int) int { return x + 1 } // inlined everywhere, no code left of its own

// sumsq is inlined everywhere, with code of its own inside its callers.
func sumsq(s []int) int {
	t := 0
	for _, v := range s {
		t += v * v
	}
	return t
}

func goid() int {
	var buf [64]byte
	n := runtime.Stack(buf[:], false)
	f := strings.Fields(string(buf[:n]))
	id, _ := strconv.Atoi(f[1])
	return id
}

type times struct {
	mu    sync.Mutex
	lines []string
}

func main() {
	workers, _ := strconv.Atoi(os.Args[1])
	rounds, _ := strconv.Atoi(os.Args[2])
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')

	tm := &times{}
	var wg sync.WaitGroup
	results := make([]int, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			id := goid()
			c := &Counter{}
			ch := make(chan int, 1)
			sum := 0
			var spans [][2]int64
			apply := func(v int) int { return add(v, w) } // a closure, called through call()
			for r := 0; r < rounds; r++ {
				start := monotonic()
				sum += block(r, ch)
				spans = append(spans, [2]int64{start, monotonic()})
				sum += c.Inc(1) + Point{r, w}.Sum() + call(apply, r) + fib(r%8) + guarded(r) + tiny(r) + sumsq([]int{r, w})
				if label("abc", r%4) {
					sum++
				}
			}
			tm.mu.Lock()
			for _, sp := range spans {
				tm.lines = append(tm.lines, fmt.Sprintf("%d %d %d\n", id, sp[0], sp[1]))
			}
			tm.mu.Unlock()
			results[w] = sum
		}(w)
	}
	wg.Wait()
	all := 0
	for _, s := range results {
		all += s
	}
	fmt.Printf("workers %d rounds %d sum %d\n", workers, rounds, all)
	if path := os.Getenv("FUNCS_TIMES"); path != "" {
		sort.Strings(tm.lines)
		os.WriteFile(path, []byte(strings.Join(tm.lines, "")), 0o644)
	}
}
