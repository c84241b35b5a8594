"""training.checkpointing's explanation of a checkpoint that does not fit the networks."""

from crfgan_tf.training.checkpointing import architecture_flag


def test_a_discriminator_of_another_width_or_input_names_ds_own_flags():
    # D's first dense layer: 16 conv features + position, with the minibatch std one more
    assert "`d_minibatch_std`" in architecture_flag("fc1/kernel", (17, 8), (18, 8))
    # D's convolutions at 4x the channels: `width`, or `d_width` (D alone)
    message = architecture_flag("conv2/kernel", (4, 4, 4, 4, 4), (4, 4, 4, 16, 16))
    assert message.startswith("`width` or `d_width`") and "x4" in message
    # the generator's layers keep their explanations
    assert "`latent_dim`" in architecture_flag("fc/kernel", (16, 4096), (32, 4096))
    assert architecture_flag("block1_conv/kernel", (3, 3, 3, 8, 8),
                             (3, 3, 3, 16, 16)).startswith("`width`")
