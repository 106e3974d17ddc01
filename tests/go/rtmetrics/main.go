// rtmetrics reads its own runtime/metrics when asked, so a test can compare what gotel reads from
// its memory with what the runtime itself reports at the same moment. Protocol on stdin/stdout,
// one line each: "quiesce" -> stop allocating, GC and return free memory, print "ok"; "metrics" -> print every
// runtime metric as one JSON object; "exit" -> exit.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

var sink [][]byte

func main() {
	// Some goroutines parked for good, and an allocation churn until quiesced.
	var mu sync.Mutex
	mu.Lock()
	for i := 0; i < 25; i++ {
		go func() { mu.Lock() }()
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sink = append(sink, make([]byte, 64+i%4000))
			if len(sink) > 2000 {
				sink = sink[:0]
			}
			if i%1000 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	descs := metrics.All()
	samples := make([]metrics.Sample, len(descs))
	for i := range descs {
		samples[i].Name = descs[i].Name
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "quiesce":
			close(stop)
			<-done
			sink = nil
			// A GC, then the heap's free memory returned to the OS: the background scavenger has
			// nothing left to release while the test compares.
			debug.FreeOSMemory()
			fmt.Println("ok")
		case "metrics":
			metrics.Read(samples)
			out := make(map[string]interface{}, len(samples))
			for _, s := range samples {
				switch s.Value.Kind() {
				case metrics.KindUint64:
					out[s.Name] = s.Value.Uint64()
				case metrics.KindFloat64:
					out[s.Name] = s.Value.Float64()
				case metrics.KindFloat64Histogram:
					h := s.Value.Float64Histogram()
					b := make([]float64, len(h.Buckets))
					for i, v := range h.Buckets {
						b[i] = math.Max(-1e300, math.Min(1e300, v))
					}
					out[s.Name] = map[string]interface{}{"counts": h.Counts, "buckets": b}
				}
			}
			out["runtime.GOMAXPROCS"] = runtime.GOMAXPROCS(0)
			out["runtime.NumGoroutine"] = runtime.NumGoroutine()
			json.NewEncoder(os.Stdout).Encode(out)
		case "exit":
			return
		}
	}
}
