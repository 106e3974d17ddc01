// demo is the program `gotel demo` traces: an HTTP server whose handlers hand jobs to a worker
// pool, driven by its own clients over loopback for a few seconds, after which it shuts down and
// exits. Standard library only.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type job struct {
	n     int
	reply chan int
}

// worker computes a little and sleeps a little per job, so that it parks on the job channel
// ("chan receive") and in time.Sleep ("sleep").
func worker(jobs <-chan job) {
	for j := range jobs {
		sum := 0
		for i := 0; i < j.n*2000; i++ {
			sum += i % 7
		}
		time.Sleep(time.Duration(j.n%3) * time.Millisecond)
		j.reply <- sum
	}
}

type stats struct {
	mu     sync.Mutex
	byPath map[string]int
}

func (s *stats) add(path string) {
	s.mu.Lock()
	s.byPath[path]++
	s.mu.Unlock()
}

func workHandler(jobs chan<- job, st *stats) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		reply := make(chan int, 1)
		select {
		case jobs <- job{n: n, reply: reply}:
		case <-r.Context().Done():
			return
		}
		sum := <-reply
		st.add(r.URL.Path)
		fmt.Fprintf(w, "%d\n", sum)
	}
}

// fanOut answers by asking several workers at once, each from its own goroutine.
func fanOut(jobs chan<- job, st *stats) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var wg sync.WaitGroup
		results := make(chan int, 4)
		for i := 1; i <= 4; i++ {
			wg.Add(1)
			go func(n int) {
				defer wg.Done()
				reply := make(chan int, 1)
				jobs <- job{n: n, reply: reply}
				results <- <-reply
			}(i)
		}
		wg.Wait()
		close(results)
		total := 0
		for v := range results {
			total += v
		}
		st.add(r.URL.Path)
		fmt.Fprintf(w, "%d\n", total)
	}
}

func client(base string, id int, stop <-chan struct{}, done *int64, keepAlive bool) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: !keepAlive}, Timeout: 5 * time.Second}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		path := fmt.Sprintf("/work?n=%d", (id+i)%5+1)
		if i%5 == 0 {
			path = "/fanout"
		}
		resp, err := c.Get(base + path)
		if err != nil {
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		atomic.AddInt64(done, 1)
	}
}

func main() {
	duration := flag.Duration("duration", 3*time.Second, "how long the clients drive the server")
	workers := flag.Int("workers", 8, "worker pool size")
	clients := flag.Int("clients", 4, "concurrent clients")
	flag.Parse()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	jobs := make(chan job)
	var pool sync.WaitGroup
	for i := 0; i < *workers; i++ {
		pool.Add(1)
		go func() {
			defer pool.Done()
			worker(jobs)
		}()
	}
	st := &stats{byPath: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/work", workHandler(jobs, st))
	mux.HandleFunc("/fanout", fanOut(jobs, st))
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)

	base := "http://" + ln.Addr().String()
	stop := make(chan struct{})
	var done int64
	var drivers sync.WaitGroup
	for i := 0; i < *clients; i++ {
		drivers.Add(1)
		go func(id int) {
			defer drivers.Done()
			client(base, id, stop, &done, id%2 == 0)
		}(i)
	}
	ticker := time.NewTicker(500 * time.Millisecond)
	deadline := time.After(*duration)
loop:
	for {
		select {
		case <-ticker.C:
		case <-deadline:
			break loop
		}
	}
	ticker.Stop()
	close(stop)
	drivers.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	srv.Shutdown(ctx)
	cancel()
	close(jobs)
	pool.Wait()
	fmt.Printf("demo: %d requests served (%v)\n", atomic.LoadInt64(&done), st.byPath)
}
