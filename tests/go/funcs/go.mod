module funcs

go 1.21
