# ruff: noqa
# Answer set of 04_feature_distillation, exercise hint_answer (MyHint).

# %% alternative: avg_pool2d by the size ratio, the squared error written out
class MyHint(nn.Module):
    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, student_feature, teacher_feature):
        target = teacher_feature.detach()
        s = self.adapter(student_feature)
        k = s.shape[-1] // target.shape[-1]
        if k > 1:
            s = F.avg_pool2d(s, k)
        return ((s - target) ** 2).mean()


# %% kdlib: forward calls kdlib's hint_loss
class MyHint(nn.Module):
    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, student_feature, teacher_feature):
        return hint_loss(student_feature, teacher_feature, self.adapter)


# %% kdlib: kdlib's loss function kept as a class attribute
import kdlib.features


class MyHint(nn.Module):
    loss = staticmethod(kdlib.features.hint_loss)

    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, student_feature, teacher_feature):
        return self.loss(student_feature, teacher_feature, self.adapter)


# %% bug: the teacher's feature is not detached
class MyHint(nn.Module):
    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, student_feature, teacher_feature):
        s = F.adaptive_avg_pool2d(self.adapter(student_feature), teacher_feature.shape[-2:])
        return F.mse_loss(s, teacher_feature)


# %% bug: summed instead of averaged
class MyHint(nn.Module):
    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, student_feature, teacher_feature):
        s = F.adaptive_avg_pool2d(self.adapter(student_feature), teacher_feature.shape[-2:])
        return F.mse_loss(s, teacher_feature.detach(), reduction="sum")


# %% bug: a 3x3 adapter
class MyHint(nn.Module):
    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=3, padding=1)

    def forward(self, student_feature, teacher_feature):
        s = F.adaptive_avg_pool2d(self.adapter(student_feature), teacher_feature.shape[-2:])
        return F.mse_loss(s, teacher_feature.detach())
