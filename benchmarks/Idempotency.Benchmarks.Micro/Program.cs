// Hot-path micro-benchmarks. Every benchmark runs a short job in-process (no generated project to build), so the
// whole set takes about a minute; pass BenchmarkDotNet arguments as usual (--filter '*Fingerprint*', --list flat).
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

var config = DefaultConfig.Instance
    .AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance).WithId("ShortRun-InProcess"))
    .WithOptions(ConfigOptions.DisableOptimizationsValidator);
if (args.Length == 0)
{
    args = ["--filter", "*"];
}

BenchmarkSwitcher.FromAssembly(typeof(Idempotency.Benchmarks.Micro.HotPathBenchmarks).Assembly).Run(args, config);
