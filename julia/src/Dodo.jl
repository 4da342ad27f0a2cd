"""
    Dodo

The Dodo closure for the neutrino fast flavour instability, over its C API (libdodo).

    using Dodo
    closure = Dodo.Closure("model.onnx"; threads = 2)     # or Dodo.Closure("box3d") for Box3D only
    F = rand(4, 6, n)                                      # (t,x,y,z) x species x cell
    F_pred = Dodo.apply(closure, F, u)                     # u: (4, n) four-velocities
    rate, spread = zeros(n), zeros(n)                      # growth rate (1/s), uncertainty (N_tot)
    apply!(closure, similar(F), F, u; growth_rate = rate, uncertainty = spread)

Arrays are column-major `(4, 6, ncell)`, which is exactly the C layout `double[ncell][6][4]`:
nothing is copied. Errors raise `Dodo.DodoError` with the status name and message.
The model argument follows the one contract of every language (docs/runtime.md): a package path
or `"box3d"` (`BOX3D_ONLY`) for Box3D alone; an empty path is refused; `nothing` is Box3D alone
too (C's NULL). `default_model_path()` is the model shipped with Dodo.
"""
module Dodo

include("LibDodo.jl")
using .LibDodo

export Closure, apply, apply!, self_test, counters, DodoError, BOX3D_ONLY, default_model_path

"""Model argument meaning Box3D alone, in every language (dodo.h DODO_BOX3D_ONLY)."""
const BOX3D_ONLY = "box3d"

"""Path of the default model shipped with Dodo, found next to libdodo; `nothing` if absent."""
function default_model_path()
    path = ccall((:dodo_default_model_path, LibDodo.library()), Ptr{UInt8}, ())
    return path == C_NULL ? nothing : unsafe_string(path)
end

struct DodoError <: Exception
    status::Cint
    name::String
    message::String
end
Base.showerror(io::IO, e::DodoError) = print(io, "DodoError ", e.name, ": ", e.message)

const CELL_NETWORK_NONFINITE = UInt32(128)
const CELL_CORRECTION_LIMITED = UInt32(256)
const CELL_REJECTED_MASK = UInt32(62)

"""A loaded closure; freed by a finalizer (or `close`). Safe to share between tasks/threads."""
mutable struct Closure
    handle::Ptr{Cvoid}
    function Closure(model::Union{Nothing,AbstractString} = nothing; threads::Integer = 0, chunk_size::Integer = 1024,
                     run_self_test::Bool = true)
        options = LibDodo.Options()
        LibDodo.options_init!(options)
        options.threads = threads
        options.chunk_size = chunk_size
        options.run_self_test = run_self_test
        handle = Ref{Ptr{Cvoid}}(C_NULL)
        status = LibDodo.closure_create(model, options, handle, UInt8[])
        status == LibDodo.DODO_OK || throw(DodoError(status, LibDodo.status_name(status), last_error_text()))
        closure = new(handle[])
        finalizer(close, closure)
        return closure
    end
end

function Base.close(closure::Closure)
    LibDodo.closure_destroy(closure.handle)
    closure.handle = C_NULL
    return nothing
end

# This thread's own last error (not another task's on the handle), whole: its length first, then the
# text. A fixed buffer of 1,024 bytes cut longer messages (the list of ONNX Runtime libraries tried,
# one line each, can exceed 1 KiB), losing their end, where the C++ and Fortran wrappers read them
# whole (C round 27).
function last_error_text()
    n = LibDodo.last_error(C_NULL, UInt8[])
    buffer = zeros(UInt8, n + 1)
    written = LibDodo.last_error(C_NULL, buffer)
    return String(buffer[1:min(written, n)])
end

function check(closure::Closure, status)
    status == LibDodo.DODO_OK && return nothing
    throw(DodoError(status, LibDodo.status_name(status), last_error_text()))
end

"""
    apply!(closure, F_pred, F_init, u = nothing; cell_status = nothing, growth_rate = nothing,
           uncertainty = nothing)

Writes the closure of `F_init` (4, 6, n) into `F_pred` (same shape; may be `F_init` itself).
`u` (4, n) or `nothing` (cells in the fluid rest frame); `cell_status` a `Vector{UInt32}` of
length n for the per-cell flags; `growth_rate` a `Vector{Float64}` of length n for the growth
rate of the instability in 1/s in the comoving frame (densities in cm^-3; the model's where it
has one, else Box3D's proxy; 0 for stable and rejected cells); `uncertainty` one for the model's spread of its
correction in units of N_tot (0 where no correction is applied). See docs/runtime.md.
"""
function apply!(closure::Closure, F_pred::Array{Float64,3}, F_init::Array{Float64,3},
                u::Union{Nothing,Matrix{Float64}} = nothing; cell_status::Union{Nothing,Vector{UInt32}} = nothing,
                growth_rate::Union{Nothing,Vector{Float64}} = nothing,
                uncertainty::Union{Nothing,Vector{Float64}} = nothing)
    size(F_init, 1) == 4 && size(F_init, 2) == 6 || throw(ArgumentError("F_init must be (4, 6, ncell)"))
    size(F_pred) == size(F_init) || throw(ArgumentError("F_pred must have the shape of F_init"))
    n = size(F_init, 3)
    u === nothing || size(u) == (4, n) || throw(ArgumentError("u must be (4, ncell)"))
    cell_status === nothing || length(cell_status) == n || throw(ArgumentError("cell_status must have ncell entries"))
    growth_rate === nothing || length(growth_rate) == n || throw(ArgumentError("growth_rate must have ncell entries"))
    uncertainty === nothing || length(uncertainty) == n || throw(ArgumentError("uncertainty must have ncell entries"))
    # closure too: unreachable during the call, its finalizer would destroy the handle under it
    GC.@preserve closure F_pred F_init u cell_status growth_rate uncertainty begin
        check(closure, LibDodo.apply_diagnostics(closure.handle, n, F_init, u, F_pred, cell_status, growth_rate,
                                                 uncertainty))
    end
    return F_pred
end

"""    apply(closure, F_init, u = nothing) -> F_pred"""
apply(closure::Closure, F_init::Array{Float64,3}, u = nothing) = apply!(closure, similar(F_init), F_init, u)

"""    self_test(closure) -> largest error over the model's test vectors, in units of N_tot"""
function self_test(closure::Closure)
    worst = Ref{Cdouble}(0)
    check(closure, LibDodo.self_test(closure.handle, worst))
    return worst[]
end

"""    counters(closure) -> NamedTuple of event counts (cells, rejected, ...)"""
function counters(closure::Closure)
    c = Ref{LibDodo.Counters}()
    check(closure, LibDodo.get_counters(closure.handle, c))
    return (cells = c[].cells, rejected = c[].rejected, no_crossing = c[].no_crossing,
            box3d_limited = c[].box3d_limited, network_nonfinite = c[].network_nonfinite,
            correction_limited = c[].correction_limited)
end

has_model(closure::Closure) = LibDodo.has_model(closure.handle) == 1
version() = LibDodo.version()

end # module Dodo
