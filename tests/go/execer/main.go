// execer starts a few goroutines, waits for a line on stdin, then replaces itself with the program
// named by its first argument (execve), as a wrapper or a re-exec'ing server does.
package main

import (
	"bufio"
	"fmt"
	"os"
	"sync"
	"syscall"
)

func worker(id int, wg *sync.WaitGroup) {
	defer wg.Done()
	_ = id * 2
}

func main() {
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go worker(i, &wg)
	}
	wg.Wait()
	bufio.NewReader(os.Stdin).ReadString('\n')
	if len(os.Args) < 2 {
		fmt.Println("nothing to exec")
		return
	}
	err := syscall.Exec(os.Args[1], os.Args[1:], os.Environ())
	fmt.Fprintln(os.Stderr, "exec failed:", err)
	os.Exit(1)
}
