"""Regularizers: the papers' losses, one file each, behind `losses.base.Regularizer`."""

from losses.base import Regularizer

__all__ = ["Regularizer"]
