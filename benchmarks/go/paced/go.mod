module example.com/gotel/bench/paced

go 1.21
