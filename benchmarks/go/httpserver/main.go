// httpserver is a small net/http service for load tests: each request hands work to a pool of
// worker goroutines over a channel and waits for the answer, like many real services do.
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
)

type job struct {
	payload []byte
	done    chan [32]byte
}

func worker(jobs <-chan job) {
	for j := range jobs {
		j.done <- sha256.Sum256(j.payload)
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	workers := flag.Int("workers", 8, "worker goroutines")
	flag.Parse()
	jobs := make(chan job)
	for i := 0; i < *workers; i++ {
		go worker(jobs)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		j := job{payload: []byte(r.URL.Path), done: make(chan [32]byte, 1)}
		jobs <- j
		sum := <-j.done
		fmt.Fprintf(w, "%x\n", sum[:8])
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().String())
	http.Serve(ln, nil)
}
