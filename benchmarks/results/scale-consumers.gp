# Renders scale-consumers.png from scale-consumers.dat (columns: processes, msg/s, consumers CPU s, PostgreSQL CPU s,
# RabbitMQ CPU s), the table of scale-consumers.md: cd benchmarks/results && gnuplot scale-consumers.gp
set terminal pngcairo size 900,480 font ",10"
set output "scale-consumers.png"
set title "1, 2 and 4 consumer processes on one RabbitMQ queue and one PostgreSQL store (2 cores)"
set xlabel "consumer processes"
set ylabel "msg/s"
set y2label "CPU seconds for the run"
set xtics (1, 2, 4)
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set key left bottom
set grid
plot "scale-consumers.dat" using 1:2 with linespoints lw 2 title "throughput (msg/s)", \
     "" using 1:3 axes x1y2 with linespoints title "consumers CPU s", \
     "" using 1:4 axes x1y2 with linespoints title "PostgreSQL CPU s", \
     "" using 1:5 axes x1y2 with linespoints title "RabbitMQ CPU s"
