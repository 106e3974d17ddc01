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

func main() {
	n := flag.Int("n", 200000, "calls")
	wait := flag.Bool("wait", false, "wait for a line on stdin before starting")
	flag.Parse()
	if *wait {
		fmt.Fscanln(os.Stdin)
	}
	s := 0
	start := time.Now()
	for i := 0; i < *n; i++ {
		s = leaf(s, i)
	}
	elapsed := time.Since(start)
	fmt.Printf("ns/op %.1f sum %d\n", float64(elapsed.Nanoseconds())/float64(*n), s)
}
