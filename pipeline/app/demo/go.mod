module gotel.dev/demo

go 1.21
