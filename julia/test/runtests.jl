# Run with:  DODO_MODEL=path/to/model.onnx julia --project=julia julia/test/runtests.jl
# (DODO_LIBRARY=path/to/libdodo.so if `python3 -m dodo info` cannot find it.)
using Test
using Dodo

@testset "Dodo.jl" begin
    model = get(ENV, "DODO_MODEL", "")
    @test occursin(".", Dodo.version())

    @test_throws DodoError Dodo.Closure("/no/such/model.onnx")
    missing_file = try
        Dodo.Closure("/no/such/model.onnx")
    catch error
        error
    end
    @test missing_file isa DodoError && endswith(missing_file.message, "does not exist")  # the whole message
    @test_throws DodoError Dodo.Closure("")            # an empty path never means Box3D alone
    @test !Dodo.has_model(Dodo.Closure(Dodo.BOX3D_ONLY))
    @test Dodo.default_model_path() === nothing || isfile(Dodo.default_model_path())

    n = 20
    F = zeros(4, 6, n)
    for c in 1:n, a in 1:6
        F[:, a, c] = [1.0 + 0.1a, 0.3cos(0.2c + a), 0.3sin(0.2c + a), 0.1]
    end
    F[2:4, 4, :] .= -F[2:4, 1, :]

    box = Dodo.Closure()
    @test !Dodo.has_model(box)
    F_box = apply(box, F)
    # Flavour-summed four-flux of neutrinos and antineutrinos is conserved.
    for c in 1:n, s in 0:1
        @test maximum(abs.(sum(F_box[:, 3s+1:3s+3, c] .- F[:, 3s+1:3s+3, c], dims = 2))) < 1e-12
    end

    # Box3D alone: the growth-rate proxy, and no uncertainty.
    rate, spread = fill(-1.0, n), fill(-1.0, n)
    apply!(box, similar(F), F; growth_rate = rate, uncertainty = spread)
    @test all(rate .>= 0) && any(rate .> 0) && all(spread .== 0)
    @test_throws ArgumentError apply!(box, similar(F), F; growth_rate = zeros(n - 1))

    if !isempty(model)
        closure = Dodo.Closure(model; threads = 2)
        status = zeros(UInt32, n)
        F_pred = apply!(closure, similar(F), F; cell_status = status, growth_rate = rate, uncertainty = spread)
        @test all(s -> s & Dodo.CELL_REJECTED_MASK == 0, status)
        @test all(rate .>= 0) && all(spread .>= 0)
        @test self_test(closure) < 1e-5
        @test counters(closure).cells >= n
        close(closure)
    end
    close(box)
end
