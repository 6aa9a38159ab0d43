using Idempotency.InMemory;
using Idempotency.Storage;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace Idempotency.Core.Tests;

public sealed class OptionsTests
{
    [Theory]
    [InlineData("HandlerName", "")]
    [InlineData("HandlerName", "has space")]
    [InlineData("MaxKeyBytes", "0")]
    [InlineData("MaxKeyBytes", "5000")]
    [InlineData("Retention", "00:00:10")]
    public void Each_bad_option_is_named_in_the_error(string setting, string value)
    {
        var options = new IdempotencyOptions { HandlerName = "ok" };
        switch (setting)
        {
            case "HandlerName": options.HandlerName = value; break;
            case "MaxKeyBytes": options.MaxKeyBytes = int.Parse(value); break;
            case "Retention": options.Retention = TimeSpan.Parse(value); break;
        }

        var error = Assert.Throws<ArgumentException>(options.Validate);
        Assert.Contains(setting, error.Message);
    }

    [Fact]
    public void Retry_settings_are_validated_with_their_path()
    {
        var options = new IdempotencyOptions { HandlerName = "ok" };
        options.Retry.MaxAttempts = 0;
        options.Retry.MaxDelay = TimeSpan.FromMilliseconds(1);

        var error = Assert.Throws<ArgumentException>(options.Validate);
        Assert.Contains("Retry.MaxAttempts", error.Message);
        Assert.Contains("Retry.MaxDelay", error.Message);
    }

    [Fact]
    public async Task Bad_handler_options_stop_the_host_at_start_up_naming_the_setting()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddIdempotency()
            .UseStore(_ => new InMemoryIdempotencyStore())
            .ConfigureHandler("orders", o => o.MaxKeyBytes = -1);
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("Idempotency handler 'orders'", error.Message);
        Assert.Contains("MaxKeyBytes", error.Message);
    }

    [Fact]
    public async Task Claim_at_commit_with_a_store_that_cannot_do_it_stops_the_host_at_start_up()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["Idempotency:Handlers:orders:ClaimTiming"] = "AtCommit" });
        builder.Services.AddIdempotency()
            .UseStore(_ => new ClaimFirstOnlyStore())
            .ConfigureHandler("orders", builder.Configuration.GetSection("Idempotency:Handlers:orders"));
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("Idempotency handler 'orders'", error.Message);
        Assert.Contains("ClaimTiming AtCommit", error.Message);
        Assert.Contains("'claim-first'", error.Message);
    }

    [Fact]
    public async Task A_key_limit_above_what_the_store_holds_stops_the_host_at_start_up()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddIdempotency()
            .UseStore(_ => new ClaimFirstOnlyStore { MaxKeyBytes = 256 })
            .ConfigureHandler("orders", o => o.MaxKeyBytes = 512);
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("Idempotency handler 'orders'", error.Message);
        Assert.Contains("MaxKeyBytes is 512", error.Message);
        Assert.Contains("'claim-first' store holds keys of at most 256", error.Message);
    }

    [Fact]
    public async Task Claim_at_commit_binds_from_configuration_and_starts_with_a_store_that_supports_it()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["Idempotency:Handlers:orders:ClaimTiming"] = "AtCommit" });
        builder.Services.AddIdempotency()
            .UseStore(_ => new InMemoryIdempotencyStore())
            .ConfigureHandler("orders", builder.Configuration.GetSection("Idempotency:Handlers:orders"));
        using var host = builder.Build();
        await host.StartAsync(TestContext.Current.CancellationToken);

        var options = host.Services.GetRequiredService<IOptionsMonitor<IdempotencyOptions>>().Get("orders");
        Assert.Equal(ClaimTiming.AtCommit, options.ClaimTiming);
        await host.StopAsync(TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task Handler_options_bind_from_configuration()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Idempotency:Handlers:orders:MaxKeyBytes"] = "128",
            ["Idempotency:Handlers:orders:Retry:MaxAttempts"] = "7",
            ["Idempotency:Handlers:orders:PayloadMismatchPolicy"] = "Quarantine",
        });
        builder.Services.AddScoped<NoOpHandler>();
        builder.Services.AddIdempotency()
            .UseStore(_ => new InMemoryIdempotencyStore())
            .ConfigureHandler("orders", builder.Configuration.GetSection("Idempotency:Handlers:orders"));
        using var host = builder.Build();
        await host.StartAsync(TestContext.Current.CancellationToken);

        var processor = host.Services.CreateIdempotentProcessor<NoOpHandler>("orders");

        Assert.Equal(128, processor.Options.MaxKeyBytes);
        Assert.Equal(7, processor.Options.Retry.MaxAttempts);
        Assert.Equal(PayloadMismatchPolicy.Quarantine, processor.Options.PayloadMismatchPolicy);
        Assert.Equal("orders", processor.HandlerName);
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(TestMessages.Create("x"), TestContext.Current.CancellationToken)).Outcome);
        await host.StopAsync(TestContext.Current.CancellationToken);
    }

    [Fact]
    public void Processor_without_a_store_says_how_to_register_one()
    {
        var services = new ServiceCollection();
        services.AddIdempotency().ConfigureHandler("orders");
        using var provider = services.BuildServiceProvider();

        var error = Assert.Throws<InvalidOperationException>(() => provider.CreateIdempotentProcessor<NoOpHandler>("orders"));
        Assert.Contains("UsePostgres", error.Message);
    }

    [Fact]
    public async Task Handler_is_resolved_from_a_new_scope_per_message()
    {
        var services = new ServiceCollection();
        services.AddScoped<ScopeCountingHandler>();
        services.AddIdempotency().UseStore(_ => new InMemoryIdempotencyStore()).ConfigureHandler("orders");
        await using var provider = services.BuildServiceProvider();
        var processor = provider.CreateIdempotentProcessor<ScopeCountingHandler>("orders");

        await processor.ProcessAsync(TestMessages.Create("a"), TestContext.Current.CancellationToken);
        await processor.ProcessAsync(TestMessages.Create("b"), TestContext.Current.CancellationToken);

        Assert.Equal(2, ScopeCountingHandler.Instances);
        Assert.IsType<InMemoryIdempotencyStore>(provider.GetRequiredService<IIdempotencyStore>());
    }

    public sealed class NoOpHandler : IIdempotentMessageHandler
    {
        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }

    public sealed class ScopeCountingHandler : IIdempotentMessageHandler
    {
        public static int Instances;

        public ScopeCountingHandler() => Interlocked.Increment(ref Instances);

        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }
}
