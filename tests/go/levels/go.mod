module example.com/gotel/levels

go 1.19
