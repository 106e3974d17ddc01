module example.com/gotel/oracle

go 1.21
