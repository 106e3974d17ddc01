module example.com/gotel/bench/spawn

go 1.21
