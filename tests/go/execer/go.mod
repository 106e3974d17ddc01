module example.com/gotel/execer

go 1.19
