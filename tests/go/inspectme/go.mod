module example.com/gotel/inspectme

go 1.19
