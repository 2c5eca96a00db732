"""
Where the cells of a feature grid of a view lie in the source image and in the other view, from the
views' projective matrices (the mapper's ``view1_matrix`` / ``view2_matrix``: source continuous
coordinates -> view continuous coordinates).

The mapper's ``correspondence`` is computed on the stride-4 grid of VADeR's dense head. DenseCL and PixPro
compare cells of the last backbone stage (stride 32), whose centres are not stride-4 cell centres, so
they map their own grid here, exactly, through the same matrices that warped the pixels.

Coordinates follow the mapper: continuous pixel coordinates, cell (r, c) of a stride-s grid spans
[c s, (c + 1) s) x [r s, (r + 1) s) and has its centre at ((c + 0.5) s, (r + 0.5) s). Cells are flattened
row-major, P = rows x cols.
"""

import torch

__all__ = ["grid_points", "map_points", "source_cells", "pixpro_positive_mask", "nearest_cells_in_other_view"]


def grid_points(rows, cols, stride, offset, dtype=torch.float64, device=None):
    """(rows x cols, 2) view points (x, y) = ((c + offset) s, (r + offset) s), row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(rows, dtype=dtype, device=device), torch.arange(cols, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([(xs.flatten() + offset) * stride, (ys.flatten() + offset) * stride], dim=1)


def map_points(matrices, points):
    """
    (B, 3, 3) projective matrices applied to (P, 2) or (B, P, 2) points -> (B, P, 2) mapped points and a
    (B, P) bool, True where the point maps in front (w > 0; behind, its location means nothing).
    """
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    mapped = homogeneous @ matrices.transpose(1, 2)
    w = mapped[..., 2:]
    return mapped[..., :2] / w, w[..., 0] > 0


def _inside(points, heights, widths):
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x < widths[:, None]) & (y >= 0) & (y < heights[:, None])


def source_cells(view_matrices, heights, widths, rows, cols, stride):
    """
    The cells of each view's stride-``stride`` grid in its source image, in PixPro's units: x divided by
    the source width, y by its height (PixPro normalises its crop boxes so).

    Returns (B, P, 2) centres, (B, P) bin diagonals (the longer diagonal of the cell's quadrilateral in the
    source; for a crop, with or without a flip, the bin's diagonal PixPro computes) and a (B, P) bool,
    True where the centre shows the source (not padding of an affine or homography warp).
    """
    to_source = torch.linalg.inv(view_matrices)
    scale = torch.stack([widths, heights], dim=1)[:, None, :]
    centres, in_front = map_points(to_source, grid_points(rows, cols, stride, 0.5, view_matrices.dtype, view_matrices.device))
    content = in_front & _inside(centres, heights, widths)
    corners = {
        name: map_points(to_source, grid_points(rows, cols, stride, 0.0, view_matrices.dtype, view_matrices.device) + shift)[0] / scale
        for name, shift in (
            ("top_left", centres.new_tensor([0.0, 0.0])),
            ("top_right", centres.new_tensor([stride, 0.0])),
            ("bottom_left", centres.new_tensor([0.0, stride])),
            ("bottom_right", centres.new_tensor([stride, stride])),
        )
    }
    diagonals = torch.maximum(
        (corners["bottom_right"] - corners["top_left"]).norm(dim=-1),
        (corners["bottom_left"] - corners["top_right"]).norm(dim=-1),
    )
    return centres / scale, diagonals, content


def pixpro_positive_mask(view1_matrices, view2_matrices, heights, widths, rows, cols, stride, radius):
    """
    (B, P, P) bool: cell i of view 1 and cell j of view 2 are a positive pair when both centres show the
    source and their distance in the source is below ``radius`` x the larger of the two bin diagonals
    (PixPro's threshold T, normalised coordinates as PixPro's).
    """
    centres1, diagonals1, content1 = source_cells(view1_matrices, heights, widths, rows, cols, stride)
    centres2, diagonals2, content2 = source_cells(view2_matrices, heights, widths, rows, cols, stride)
    distance = torch.cdist(centres1, centres2)
    bin_diagonal = torch.maximum(diagonals1[:, :, None], diagonals2[:, None, :])
    return (distance < radius * bin_diagonal) & content1[:, :, None] & content2[:, None, :]


def nearest_cells_in_other_view(view1_matrices, view2_matrices, heights, widths, rows, cols, stride):
    """
    For each cell of view 1's stride-``stride`` grid: the flat index of the view-2 cell its centre's scene
    point falls into (the nearest view-2 cell centre), and whether it is a match: the centre shows the
    source in view 1 and lands inside view 2. Returns (B, P) long indices (0 where no match) and (B, P) bool.
    """
    to_source = torch.linalg.inv(view1_matrices)
    centres = grid_points(rows, cols, stride, 0.5, view1_matrices.dtype, view1_matrices.device)
    in_source, front1 = map_points(to_source, centres)
    in_view2, front2 = map_points(view2_matrices, in_source)
    column, row = (in_view2[..., 0] / stride).floor(), (in_view2[..., 1] / stride).floor()
    valid = front1 & _inside(in_source, heights, widths) & front2 & (column >= 0) & (column < cols) & (row >= 0) & (row < rows)
    index = torch.where(valid, row * cols + column, torch.zeros_like(row)).long()
    return index, valid
