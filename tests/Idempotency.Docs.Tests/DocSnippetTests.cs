using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace Idempotency.Docs.Tests;

/// <summary>
/// Every ```csharp block of README.md and docs/*.md compiles against the shipped packages, so the documentation
/// cannot drift from the API. A block is compiled on its own as the body of an application: its <c>using</c>
/// directives stay at the top, its type declarations beside it, its statements go into an async method. It may use
/// the implicit usings of a worker project and the ambient variables and types of <c>Ambient.cs</c>
/// (<c>builder</c>, <c>dataSource</c>, <c>ct</c>, <c>Order</c>, <c>OrderHandler</c>...). A block that is not meant to
/// compile is written ```text (or ```cs for a fragment) instead.
/// </summary>
public sealed partial class DocSnippetTests
{
    private static readonly string Root = typeof(DocSnippetTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
        .Single(a => a.Key == "RepositoryRoot").Value!;

    // The implicit usings of a Microsoft.NET.Sdk.Worker project, which is what most consumers are.
    private const string ImplicitUsings = """
        global using System;
        global using System.Collections.Generic;
        global using System.IO;
        global using System.Linq;
        global using System.Net.Http;
        global using System.Threading;
        global using System.Threading.Tasks;
        global using Microsoft.Extensions.Configuration;
        global using Microsoft.Extensions.DependencyInjection;
        global using Microsoft.Extensions.Hosting;
        global using Microsoft.Extensions.Logging;
        global using DocsAmbient;
        """;

    private static readonly Lazy<IReadOnlyList<MetadataReference>> References = new(LoadReferences);

    public static TheoryData<string> Snippets()
    {
        var data = new TheoryData<string>();
        foreach (var snippet in FindSnippets())
        {
            data.Add(snippet.Id);
        }

        return data;
    }

    [Fact]
    public void Documentation_has_csharp_snippets_to_check()
    {
        Assert.True(FindSnippets().Count >= 10, "Fewer than 10 ```csharp blocks found: is RepositoryRoot right? " + Root);
    }

    [Theory]
    [MemberData(nameof(Snippets))]
    public void Snippet_compiles(string id)
    {
        var snippet = FindSnippets().Single(s => s.Id == id);
        var source = Wrap(snippet.Code);
        var compilation = CSharpCompilation.Create(
            "Snippet",
            [CSharpSyntaxTree.ParseText(ImplicitUsings, Parse, cancellationToken: TestContext.Current.CancellationToken), CSharpSyntaxTree.ParseText(source, Parse, path: id, cancellationToken: TestContext.Current.CancellationToken)],
            References.Value,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable));

        var errors = compilation.GetDiagnostics(TestContext.Current.CancellationToken)
            .Where(d => d.Severity == DiagnosticSeverity.Error)
            .Select(d => $"  {d.Id}: {d.GetMessage(System.Globalization.CultureInfo.InvariantCulture)}  [{source.Split('\n')[d.Location.GetLineSpan().StartLinePosition.Line].Trim()}]")
            .ToList();
        Assert.True(errors.Count == 0, $"{id} does not compile:{Environment.NewLine}{string.Join(Environment.NewLine, errors)}{Environment.NewLine}--- as compiled ---{Environment.NewLine}{source}");
    }

    private static readonly CSharpParseOptions Parse = new(LanguageVersion.Latest);

    /// <summary>Turns a block into a compilation unit: usings on top, statements in a method, declarations beside it.</summary>
    internal static string Wrap(string code)
    {
        var unit = (CompilationUnitSyntax)CSharpSyntaxTree.ParseText(code, Parse).GetRoot();
        var text = new StringBuilder();
        foreach (var usingDirective in unit.Usings)
        {
            text.AppendLine(usingDirective.ToFullString().Trim());
        }

        text.AppendLine("internal sealed class Snippet__ : DocsAmbient.AmbientVariables");
        text.AppendLine("{");
        text.AppendLine("    internal static async System.Threading.Tasks.Task RunAsync()");
        text.AppendLine("    {");
        foreach (var statement in unit.Members.OfType<GlobalStatementSyntax>())
        {
            text.AppendLine(statement.ToFullString().TrimEnd());
        }

        text.AppendLine("        await System.Threading.Tasks.Task.CompletedTask;");
        text.AppendLine("    }");
        text.AppendLine("}");
        foreach (var member in unit.Members.Where(m => m is not GlobalStatementSyntax))
        {
            text.AppendLine(member.ToFullString().TrimEnd());
        }

        return text.ToString();
    }

    internal sealed record Snippet(string Id, string Code);

    private static IReadOnlyList<Snippet>? _snippets;

    internal static IReadOnlyList<Snippet> FindSnippets()
    {
        if (_snippets is not null)
        {
            return _snippets;
        }

        var files = new[] { Path.Combine(Root, "README.md") }
            .Concat(Directory.GetFiles(Path.Combine(Root, "docs"), "*.md").Order(StringComparer.Ordinal))
            .Concat(Directory.GetFiles(Path.Combine(Root, "src"), "README.md", SearchOption.AllDirectories).Order(StringComparer.Ordinal));
        var snippets = new List<Snippet>();
        foreach (var file in files)
        {
            var lines = File.ReadAllLines(file);
            var relative = Path.GetRelativePath(Root, file).Replace('\\', '/');
            for (var i = 0; i < lines.Length; i++)
            {
                var open = Fence().Match(lines[i]);
                if (!open.Success)
                {
                    continue;
                }

                var indent = open.Groups["indent"].Value.Length;
                var code = new List<string>();
                var start = i + 1;
                for (i++; i < lines.Length && lines[i].Trim() != "```"; i++)
                {
                    code.Add(lines[i].Length >= indent && string.IsNullOrWhiteSpace(lines[i][..indent]) ? lines[i][indent..] : lines[i].TrimStart());
                }

                snippets.Add(new Snippet($"{relative}:{start}", string.Join('\n', code)));
            }
        }

        return _snippets = snippets;
    }

    private static List<MetadataReference> LoadReferences()
    {
        // The runtime's assemblies plus everything this test project ships with (the packages and their dependencies).
        var paths = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator)
            .Concat(Directory.GetFiles(AppContext.BaseDirectory, "*.dll"))
            .Where(p => !Path.GetFileName(p).StartsWith("Microsoft.CodeAnalysis", StringComparison.Ordinal))
            .GroupBy(Path.GetFileName, StringComparer.OrdinalIgnoreCase)
            .Select(g => g.First());
        var references = new List<MetadataReference>();
        foreach (var path in paths)
        {
            try
            {
                using var stream = File.OpenRead(path);
                using var pe = new System.Reflection.PortableExecutable.PEReader(stream);
                if (pe.HasMetadata)
                {
                    references.Add(MetadataReference.CreateFromFile(path));
                }
            }
            catch (BadImageFormatException)
            {
                // a native library
            }
        }

        return references;
    }

    [GeneratedRegex(@"^(?<indent>\s*)```csharp\s*$")]
    private static partial Regex Fence();
}
