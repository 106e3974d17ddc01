// hold keeps N goroutines alive, each parked on a channel receive, so that a tracer has N live
// goroutines to track. After an optional first line on stdin (-wait) it starts them, prints
// "ready N" once all are parked, waits for another line on stdin, then lets them all exit.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"sync"
)

func park(stop <-chan struct{}, started, done *sync.WaitGroup) {
	started.Done()
	<-stop
	done.Done()
}

func main() {
	n := flag.Int("n", 1000000, "goroutines to keep alive")
	wait := flag.Bool("wait", false, "wait for a line on stdin before starting")
	flag.Parse()
	in := bufio.NewReader(os.Stdin)
	if *wait {
		in.ReadString('\n')
	}
	stop := make(chan struct{})
	var started, done sync.WaitGroup
	started.Add(*n)
	done.Add(*n)
	for i := 0; i < *n; i++ {
		go park(stop, &started, &done)
	}
	started.Wait()
	fmt.Printf("ready %d\n", *n)
	in.ReadString('\n')
	close(stop)
	done.Wait()
}
