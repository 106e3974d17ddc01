module example.com/gotel/churn

go 1.21
