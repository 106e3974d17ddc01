module example.com/gotel/rtmetrics

go 1.19
