# Renders scale-consumers.png from scale-consumers.dat, the table of scale-consumers.md (one data block per broker,
# columns: processes, msg/s, vs 1 process, store share %, PostgreSQL cores busy, all three cores busy, load,
# CPU µs/msg, CPU-bound msg/s):
#   cd benchmarks/results && gnuplot scale-consumers.gp
set terminal pngcairo size 1200,500 font ",10"
set output "scale-consumers.png"
brokers = "RabbitMQ Kafka SQS"
set multiplot layout 1,2 title "1, 2 and 4 consumer processes per broker, one PostgreSQL store, 2 cores shared with other builds"
set xlabel "consumer processes"
set xtics (1, 2, 4)
set xrange [0.8:4.2]
set grid

set title "throughput: measured (solid), CPU-bound = 2 cores / CPU per message (dashed)"
set ylabel "msg/s (log scale)"
set logscale y
set key below maxrows 3
plot for [i=1:words(brokers)] "scale-consumers.dat" index word(brokers, i) using 1:2 with linespoints lw 2 pt 7 lc i title word(brokers, i)." measured", \
     for [i=1:words(brokers)] "scale-consumers.dat" index word(brokers, i) using 1:9 with linespoints lw 1 dt 2 pt 6 lc i title word(brokers, i)." CPU-bound"

set title "CPU: PostgreSQL (solid) and consumers + PostgreSQL + broker (dashed)"
set ylabel "cores busy (CPU s / run s)"
unset logscale y
set yrange [0:2.2]
set key below maxrows 3
plot for [i=1:words(brokers)] "scale-consumers.dat" index word(brokers, i) using 1:5 with linespoints lw 2 pt 7 lc i title word(brokers, i)." PostgreSQL", \
     for [i=1:words(brokers)] "scale-consumers.dat" index word(brokers, i) using 1:6 with linespoints lw 1 dt 2 pt 6 lc i title word(brokers, i)." all three", \
     2 with lines lc rgb "black" dt 3 title "the machine's 2 cores"
unset multiplot
