module example.com/gotel/fidelity

go 1.21
