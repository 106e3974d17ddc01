module example.com/gotel/spawner

go 1.19
