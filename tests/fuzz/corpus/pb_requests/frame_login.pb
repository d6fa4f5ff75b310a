
logintd"ios*8.0.250“½