module example.com/gotel/lingerer

go 1.19
