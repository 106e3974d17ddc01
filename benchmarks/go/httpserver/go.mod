module example.com/gotel/bench/httpserver

go 1.21
