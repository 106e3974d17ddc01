module example.com/gotel/bench/hold

go 1.21
