// calls calls a small leaf function in a loop and prints ns per call: the workload on which a
// function probe's cost (entry + RET) is measured. The leaf has no stack check and calls nothing,
// so its frame cannot move while it runs: a uretprobe there is safe (with GODEBUG=asyncpreemptoff=1,
// so that no signal-injected call can grow the stack mid-call), which is what the comparison with
// bcc's uprobe+uretprobe pair needs.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

//go:noinline
func leaf(a, b int) int { return a*31 + b }

// framed has a frame and a stack check (it calls leaf), so its entry probe sits on `push rbp`,
// which the kernel emulates instead of single-stepping.
//
//go:noinline
func framed(a, b int) int { return leaf(a, b) + 1 }

func main() {
	n := flag.Int("n", 200000, "calls")
	useFramed := flag.Bool("framed", false, "call framed (which calls leaf) instead of leaf")
	wait := flag.Bool("wait", false, "wait for a line on stdin before starting")
	flag.Parse()
	if *wait {
		fmt.Fscanln(os.Stdin)
	}
	s := 0
	start := time.Now()
	if *useFramed {
		for i := 0; i < *n; i++ {
			s = framed(s, i)
		}
	} else {
		for i := 0; i < *n; i++ {
			s = leaf(s, i)
		}
	}
	elapsed := time.Since(start)
	fmt.Printf("ns/op %.1f sum %d\n", float64(elapsed.Nanoseconds())/float64(*n), s)
}
