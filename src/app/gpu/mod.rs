//! The comparison image on the GPU: an `egui_wgpu` paint callback running `shaders/compare.wgsl`
//! (wipe, flicker, difference with a colormap LUT and gain, nearest-neighbour zoom).
//!
//! Each frame is uploaded once per change (keyed by its own generation number, so switching rates
//! re-uploads the reconstruction only) and shared by every pane; each pane has its own uniform buffer so the panes of one frame do not overwrite each
//! other's parameters.

use std::sync::Arc;

use egui_wgpu::wgpu;
use egui_wgpu::wgpu::util::DeviceExt as _;

use super::colormap::{lut_rgba, LUT_SIZE};

/// Panes drawn per frame at most (3-up).
pub const MAX_PANES: usize = 3;

/// The two frames on show, RGBA8, shared by the panes.
pub struct FramePair {
    pub width: u32,
    pub height: u32,
    pub original: Rgba,
    /// Absent when the frame has not been reconstructed.
    pub reconstruction: Option<Rgba>,
}

/// One frame's RGBA8 pixels and the generation that changes whenever they do.
#[derive(Clone)]
pub struct Rgba {
    pub generation: u64,
    pub pixels: Arc<Vec<u8>>,
}

/// RGB8 → RGBA8 (textures have no 3-byte formats). Fixed-size copies into a filled buffer: a
/// 4K frame is 8 million pixels, and pushing them one by one took tens of milliseconds.
pub fn rgba_from_rgb(rgb: &[u8]) -> Vec<u8> {
    let mut out = vec![255u8; rgb.len() / 3 * 4];
    for (o, p) in out.chunks_exact_mut(4).zip(rgb.chunks_exact(3)) {
        o[..3].copy_from_slice(p);
    }
    out
}

/// The shader's uniform block (four vec4s, see `compare.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub pane: [f32; 4],
    pub view: [f32; 4],
    pub image: [f32; 4],
    pub extra: [f32; 4],
}

struct FrameTextures {
    /// Generations of the pixels in the two textures (0: none yet).
    original_generation: u64,
    reconstruction_generation: u64,
    size: (u32, u32),
    original: wgpu::Texture,
    reconstruction: wgpu::Texture,
    bind_group: wgpu::BindGroup,
}

/// Pipeline, LUT and per-pane buffers, kept in egui_wgpu's callback resources.
pub struct CompareResources {
    pipeline: wgpu::RenderPipeline,
    texture_layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    lut_view: wgpu::TextureView,
    uniforms: Vec<(wgpu::Buffer, wgpu::BindGroup)>,
    frames: Option<FrameTextures>,
    srgb_target: bool,
}

/// Registers the pipeline with eframe's (or the test harness's) wgpu renderer.
pub fn install(render_state: &egui_wgpu::RenderState) {
    let resources = CompareResources::new(
        &render_state.device,
        &render_state.queue,
        render_state.target_format,
    );
    render_state
        .renderer
        .write()
        .callback_resources
        .insert(resources);
}

impl CompareResources {
    fn new(device: &wgpu::Device, queue: &wgpu::Queue, format: wgpu::TextureFormat) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("tokenscope compare"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../../shaders/compare.wgsl").into()),
        });
        let texture_entry = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable: true },
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let texture_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("tokenscope compare textures"),
            entries: &[
                texture_entry(0),
                texture_entry(1),
                texture_entry(2),
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
            ],
        });
        let uniform_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("tokenscope compare params"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("tokenscope compare"),
            bind_group_layouts: &[Some(&texture_layout), Some(&uniform_layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("tokenscope compare"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs_main"),
                buffers: &[],
                compilation_options: wgpu::PipelineCompilationOptions::default(),
            },
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs_main"),
                targets: &[Some(wgpu::ColorTargetState {
                    format,
                    blend: None,
                    write_mask: wgpu::ColorWrites::ALL,
                })],
                compilation_options: wgpu::PipelineCompilationOptions::default(),
            }),
            multiview_mask: None,
            cache: None,
        });
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("tokenscope compare"),
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });
        let lut = device.create_texture_with_data(
            queue,
            &wgpu::TextureDescriptor {
                label: Some("tokenscope colormaps"),
                size: wgpu::Extent3d {
                    width: LUT_SIZE as u32,
                    height: 3,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba8Unorm,
                usage: wgpu::TextureUsages::TEXTURE_BINDING,
                view_formats: &[],
            },
            wgpu::util::TextureDataOrder::LayerMajor,
            &lut_rgba(),
        );
        let lut_view = lut.create_view(&wgpu::TextureViewDescriptor::default());
        let uniforms = (0..MAX_PANES)
            .map(|_| {
                let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("tokenscope compare params"),
                    contents: bytemuck::bytes_of(&Params::default()),
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                });
                let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("tokenscope compare params"),
                    layout: &uniform_layout,
                    entries: &[wgpu::BindGroupEntry {
                        binding: 0,
                        resource: buffer.as_entire_binding(),
                    }],
                });
                (buffer, group)
            })
            .collect();
        Self {
            pipeline,
            texture_layout,
            sampler,
            lut_view,
            uniforms,
            frames: None,
            srgb_target: format.is_srgb(),
        }
    }

    fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, pair: &FramePair) {
        let size = (pair.width.max(1), pair.height.max(1));
        if self.frames.as_ref().is_none_or(|f| f.size != size) {
            let make = |label| {
                device.create_texture(&wgpu::TextureDescriptor {
                    label: Some(label),
                    size: wgpu::Extent3d {
                        width: size.0,
                        height: size.1,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::Rgba8Unorm,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                })
            };
            let original = make("tokenscope original");
            let reconstruction = make("tokenscope reconstruction");
            let view = |t: &wgpu::Texture| t.create_view(&wgpu::TextureViewDescriptor::default());
            let (ov, rv) = (view(&original), view(&reconstruction));
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("tokenscope compare textures"),
                layout: &self.texture_layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::TextureView(&ov),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::TextureView(&rv),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: wgpu::BindingResource::TextureView(&self.lut_view),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: wgpu::BindingResource::Sampler(&self.sampler),
                    },
                ],
            });
            self.frames = Some(FrameTextures {
                original_generation: 0,
                reconstruction_generation: 0,
                size,
                original,
                reconstruction,
                bind_group,
            });
        }
        let Some(frames) = self.frames.as_mut() else {
            return;
        };
        let expected = (size.0 * size.1 * 4) as usize;
        let write = |texture: &wgpu::Texture, data: &[u8]| {
            if data.len() != expected {
                return;
            }
            queue.write_texture(
                wgpu::TexelCopyTextureInfo {
                    texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d::ZERO,
                    aspect: wgpu::TextureAspect::All,
                },
                data,
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(4 * size.0),
                    rows_per_image: Some(size.1),
                },
                wgpu::Extent3d {
                    width: size.0,
                    height: size.1,
                    depth_or_array_layers: 1,
                },
            );
        };
        if frames.original_generation != pair.original.generation {
            write(&frames.original, &pair.original.pixels);
            frames.original_generation = pair.original.generation;
        }
        if let Some(recon) = &pair.reconstruction {
            if frames.reconstruction_generation != recon.generation {
                write(&frames.reconstruction, &recon.pixels);
                frames.reconstruction_generation = recon.generation;
            }
        }
    }
}

/// One pane's paint callback.
pub struct ComparePaint {
    pub pane: usize,
    pub params: Params,
    pub frames: Arc<FramePair>,
}

impl egui_wgpu::CallbackTrait for ComparePaint {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        if let Some(r) = resources.get_mut::<CompareResources>() {
            r.upload(device, queue, &self.frames);
            let mut params = self.params;
            if let Some(extra) = params.extra.get_mut(2) {
                *extra = if r.srgb_target { 1.0 } else { 0.0 };
            }
            if let Some((buffer, _)) = r.uniforms.get(self.pane) {
                queue.write_buffer(buffer, 0, bytemuck::bytes_of(&params));
            }
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(r) = resources.get::<CompareResources>() else {
            return;
        };
        let (Some(frames), Some((_, uniform))) = (&r.frames, r.uniforms.get(self.pane)) else {
            return;
        };
        pass.set_pipeline(&r.pipeline);
        pass.set_bind_group(0, &frames.bind_group, &[]);
        pass.set_bind_group(1, uniform, &[]);
        pass.draw(0..3, 0..1);
    }
}

/// Whether the compare resources are installed (false without a wgpu renderer).
pub fn installed(render_state: Option<&egui_wgpu::RenderState>) -> bool {
    render_state.is_some_and(|rs| {
        rs.renderer
            .read()
            .callback_resources
            .get::<CompareResources>()
            .is_some()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rgba_from_rgb_adds_an_opaque_alpha_to_every_pixel() {
        assert_eq!(
            super::rgba_from_rgb(&[1, 2, 3, 4, 5, 6]),
            vec![1, 2, 3, 255, 4, 5, 6, 255]
        );
        assert!(super::rgba_from_rgb(&[]).is_empty());
    }
}
