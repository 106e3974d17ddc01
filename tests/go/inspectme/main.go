// inspectme is the program gotel's binary inspection is tested on: a few goroutines that park on
// channels, a mutex and a timer, so the runtime functions gotel probes are all linked in.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

//go:noinline
func work(id int, in <-chan int, out chan<- int, mu *sync.Mutex, total *int) {
	for v := range in {
		mu.Lock()
		*total += v * id
		mu.Unlock()
		out <- v
	}
}

func main() {
	n := 4
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	// Tests that inspect a running process hold it here until they write a line.
	if os.Getenv("INSPECTME_WAIT") != "" {
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	in := make(chan int)
	out := make(chan int, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	total := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			work(id, in, out, &mu, &total)
		}(i)
	}
	for i := 0; i < n; i++ {
		in <- i
		<-out
	}
	close(in)
	wg.Wait()
	time.Sleep(time.Millisecond)
	fmt.Printf("workers %d total %d\n", n, total)
}
