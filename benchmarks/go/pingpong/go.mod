module example.com/gotel/bench/pingpong

go 1.21
