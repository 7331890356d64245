// The comparison panes: original, reconstruction, difference heatmap or a wipe between the two,
// with zoom and pan. One full-viewport triangle per pane; egui sets the viewport to the pane.

struct Params {
    // Pane size in points (xy), pixels per point (z), mode (w): 0 original, 1 reconstruction,
    // 2 difference, 3 wipe.
    pane: vec4<f32>,
    // View centre in image pixels (xy), zoom in points per image pixel (z), wipe split in pane
    // points (w).
    view: vec4<f32>,
    // Image size (xy), gain (z), metric (w): 0 absolute, 1 squared, 2 luma, 3/4/5 red/green/blue.
    image: vec4<f32>,
    // Reconstruction present (x), colormap row (y), sRGB target (z).
    extra: vec4<f32>,
};

@group(0) @binding(0) var original_tex: texture_2d<f32>;
@group(0) @binding(1) var recon_tex: texture_2d<f32>;
@group(0) @binding(2) var lut_tex: texture_2d<f32>;
@group(0) @binding(3) var linear_sampler: sampler;
@group(1) @binding(0) var<uniform> p: Params;

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    // Pane-local position in points, origin top-left.
    @location(0) local: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOut {
    // A triangle that covers the viewport: (-1,-1), (3,-1), (-1,3).
    let uv = vec2<f32>(f32((index << 1u) & 2u), f32(index & 2u));
    var out: VertexOut;
    out.position = vec4<f32>(uv.x * 2.0 - 1.0, 1.0 - uv.y * 2.0, 0.0, 1.0);
    out.local = uv * p.pane.xy;
    return out;
}

// Magnified: exact texels (nearest neighbour), so single pixels stay crisp. Minified: bilinear.
fn fetch(tex: texture_2d<f32>, img: vec2<f32>) -> vec3<f32> {
    let size = vec2<i32>(p.image.xy);
    if (p.view.z >= 1.0) {
        let ij = clamp(vec2<i32>(floor(img)), vec2<i32>(0, 0), size - vec2<i32>(1, 1));
        return textureLoad(tex, ij, 0).rgb;
    }
    return textureSampleLevel(tex, linear_sampler, img / p.image.xy, 0.0).rgb;
}

fn luma(c: vec3<f32>) -> f32 {
    return dot(c, vec3<f32>(0.299, 0.587, 0.114));
}

// Same formulas as `colormap::diff_value` on the CPU.
fn difference(a: vec3<f32>, b: vec3<f32>) -> f32 {
    let d = a - b;
    let metric = i32(p.image.w + 0.5);
    if (metric == 1) {
        return dot(d * d, vec3<f32>(1.0 / 3.0));
    }
    if (metric == 2) {
        return abs(luma(a) - luma(b));
    }
    if (metric == 3) {
        return abs(d.x);
    }
    if (metric == 4) {
        return abs(d.y);
    }
    if (metric == 5) {
        return abs(d.z);
    }
    return dot(abs(d), vec3<f32>(1.0 / 3.0));
}

fn colormap(v: f32) -> vec3<f32> {
    let i = i32(clamp(v, 0.0, 1.0) * 255.0 + 0.5);
    return textureLoad(lut_tex, vec2<i32>(i, i32(p.extra.y + 0.5)), 0).rgb;
}

fn to_target(c: vec3<f32>) -> vec4<f32> {
    // egui draws in gamma space; convert only when the target is an sRGB format.
    if (p.extra.z > 0.5) {
        return vec4<f32>(pow(c, vec3<f32>(2.2)), 1.0);
    }
    return vec4<f32>(c, 1.0);
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let img = p.view.xy + (in.local - p.pane.xy * 0.5) / p.view.z;
    if (img.x < 0.0 || img.y < 0.0 || img.x >= p.image.x || img.y >= p.image.y) {
        // A checkerboard outside the picture, so black borders in the picture stay visible.
        let cell = vec2<i32>(floor(in.local / 12.0));
        let dark = ((cell.x + cell.y) & 1) == 0;
        return to_target(select(vec3<f32>(0.16), vec3<f32>(0.12), dark));
    }
    let mode = i32(p.pane.w + 0.5);
    let has_recon = p.extra.x > 0.5;
    let a = fetch(original_tex, img);
    if (mode == 0) {
        return to_target(a);
    }
    if (!has_recon) {
        // Not computed for this frame: the original, dimmed.
        return to_target(a * 0.25);
    }
    let b = fetch(recon_tex, img);
    if (mode == 1) {
        return to_target(b);
    }
    if (mode == 2) {
        return to_target(colormap(difference(a, b) * p.image.z));
    }
    // Wipe: a 1-pixel white split line between the original (left) and reconstruction.
    let split = p.view.w;
    if (abs(in.local.x - split) < 1.0 / p.pane.z) {
        return to_target(vec3<f32>(1.0));
    }
    return to_target(select(b, a, in.local.x < split));
}
