// grpcecho is a gRPC-go echo service and its load generator, the case users reported losing most
// of its throughput to a Go eBPF tracer (open-telemetry/opentelemetry-ebpf-instrumentation#2578).
//
//	grpcecho serve                       listen on 127.0.0.1:0, print the address, serve until killed
//	grpcecho load ADDR CONNS STREAMS SECONDS
//	                                     STREAMS goroutines call Echo over CONNS connections for
//	                                     SECONDS; print "requests N errors E rps R"
//
// The service is gotel.test.Echo/Echo: a unary call whose request and answer are a
// google.protobuf.BytesValue, registered from a hand-written ServiceDesc (no generated code).
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const method = "/gotel.test.Echo/Echo"

func echo(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.BytesValue)
	if err := dec(in); err != nil {
		return nil, err
	}
	return in, nil
}

var echoService = grpc.ServiceDesc{
	ServiceName: "gotel.test.Echo",
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Echo", Handler: echo}},
	Metadata:    "grpcecho",
}

func serve() {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := grpc.NewServer()
	s.RegisterService(&echoService, struct{}{})
	fmt.Println(lis.Addr().String())
	if err := s.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func load(addr string, conns, streams int, seconds float64) {
	clients := make([]*grpc.ClientConn, conns)
	for i := range clients {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer c.Close()
		clients[i] = c
	}
	var requests, errors atomic.Int64
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	payload := &wrapperspb.BytesValue{Value: []byte("hello, gotel")}
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func(c *grpc.ClientConn) {
			defer wg.Done()
			out := new(wrapperspb.BytesValue)
			for time.Now().Before(deadline) {
				if err := c.Invoke(context.Background(), method, payload, out); err != nil {
					errors.Add(1)
					continue
				}
				requests.Add(1)
			}
		}(clients[i%conns])
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	fmt.Printf("requests %d errors %d rps %.1f\n", requests.Load(), errors.Load(),
		float64(requests.Load())/elapsed)
}

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "serve" {
		serve()
		return
	}
	if len(os.Args) == 6 && os.Args[1] == "load" {
		conns, _ := strconv.Atoi(os.Args[3])
		streams, _ := strconv.Atoi(os.Args[4])
		seconds, _ := strconv.ParseFloat(os.Args[5], 64)
		load(os.Args[2], max(conns, 1), max(streams, 1), seconds)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: grpcecho serve | grpcecho load ADDR CONNS STREAMS SECONDS")
	os.Exit(2)
}
