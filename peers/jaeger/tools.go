//go:build tools

// Package peers pins Jaeger v2 for gotel's tests: `go build github.com/jaegertracing/jaeger/cmd/jaeger`
// in this module builds it at the version in go.mod, with the replace directive Jaeger's own go.mod
// has (which is why `go install ...@v1.76.0` refuses it).
package peers

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
