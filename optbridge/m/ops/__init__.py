"""Operations on updates: arithmetic with numbers or sub-chains, elementwise functions, sources
that replace the update, reductions over sub-chains, sign copying and grafting."""

from .binary import Add, Clip, Div, Lerp, Maximum, Minimum, Mul, Pow, RDiv, RPow, RSub, Sub
from .graft import (
    Graft,
    GraftGradToUpdate,
    GraftInputToOutput,
    GraftOutputToInput,
    GraftToGrad,
    GraftToParams,
)
from .multi import ClipModules, DivModules, LerpModules, PowModules, SubModules
from .reduce import MaximumModules, Mean, MinimumModules, Prod, Sum, WeightedMean, WeightedSum
from .sign import CopyMagnitude, CopySign, GradSign, RCopySign, UpdateSign
from .sources import (
    Clone,
    Fill,
    Grad,
    Identity,
    Noop,
    Ones,
    Params,
    Randn,
    RandomSample,
    Uniform,
    Zeros,
)
from .unary import (
    Abs,
    CustomUnaryOperation,
    Exp,
    NanToNum,
    Negate,
    Reciprocal,
    Sign,
    Sqrt,
    UnaryLambda,
    UnaryParameterwiseLambda,
)

__all__ = [
    "Abs", "Add", "Clip", "ClipModules", "Clone", "CopyMagnitude", "CopySign",
    "CustomUnaryOperation", "Div", "DivModules", "Exp", "Fill", "Grad", "GradSign", "Graft",
    "GraftGradToUpdate", "GraftInputToOutput", "GraftOutputToInput", "GraftToGrad",
    "GraftToParams", "Identity", "Lerp", "LerpModules", "Maximum", "MaximumModules", "Mean",
    "Minimum", "MinimumModules", "Mul", "NanToNum", "Negate", "Noop", "Ones", "Params", "Pow",
    "PowModules", "Prod", "RCopySign", "RDiv", "RPow", "RSub", "Randn", "RandomSample",
    "Reciprocal", "Sign", "Sqrt", "Sub", "SubModules", "Sum", "Uniform", "UnaryLambda",
    "UnaryParameterwiseLambda", "UpdateSign", "WeightedMean", "WeightedSum", "Zeros",
]
